"""DAREx-q against DARE ("DARE the Extreme", Deng et al., 2024) on two real fine-tunes of SmolLM2-135M-Instruct:
delta-parameter pruning of one fine-tune at extreme drop rates, with the survivors rescaled by DARE's 1/density,
by DAREx-q's 1/q with q searched on calibration text (``q="search"``), or not at all (``q=1``).

The fine-tunes are ``merge_smollm2.py``'s (each 40 AdamW steps × 4 × 128 tokens at lr 1e-4 on one half of
Python's docs; made once into ``--work``). Each pruned delta is put back on the base and scored by perplexity
on held-out windows of its fine-tune's own source (other files than the training and calibration text).
DAREx-q's q is searched on ``--nsamples`` × ``--seqlen`` tokens of the pydocs calibration split (the merge seed
picks the windows): the q whose pruned delta changes the fine-tune's last hidden states least.

``--merged``: the two fine-tunes merged into the base by ``dare_ties`` (DARE's drops, then TIES' sign election and
disjoint mean) with DARE's rescaling or DAREx-q's (each fine-tune's own q searched, as ``prunekit merge --q search``
does), scored on both halves' held-out text (the geometric mean of the two perplexities decides). Every cell runs the merge seeds ``--seeds`` (the drop masks); a claim is decided
per (fine-tune, density) by the paired difference over seeds: held when DAREx-q is lower by more than 2 standard
errors. One torch thread.

    nice -n 10 python benchmarks/darex_smollm2.py                       # the README's table
    nice -n 10 python benchmarks/darex_smollm2.py --merged --densities 0.01 --json benchmarks/results/darex_merged.json
    python benchmarks/darex_smollm2.py --densities 0.05 --seeds 0 --eval-windows 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {"dare": {}, "darex": {"q": "search"}, "none": {"q": 1.0}}
LABELS = {"dare": "DARE (×1/density)", "darex": "DAREx-q (q searched)", "none": "no rescale (q = 1)"}
ARM = {"dare": "DARE", "darex": "DAREx-q", "none": "no rescale"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/prunekit-bench-merge", help="cache of the base and the fine-tunes")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05, 0.02, 0.01])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--finetunes", nargs="+", default=["A", "B"], choices=["A", "B"])
    ap.add_argument("--nsamples", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "darex_smollm2.json"))
    ap.add_argument("--table", action="store_true", help="only rewrite --json's verdicts and runs and print its table")
    ap.add_argument("--merged", action="store_true", help="merge both fine-tunes with dare_ties instead (see above)")
    args = ap.parse_args()
    if args.table:
        record = payload(json.loads(Path(args.json).read_text()))
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print_table(record)
        return
    torch.set_num_threads(1)

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import merge_smollm2 as ms
    from prunekit.datasets.text import calibration_windows, split_documents
    from prunekit.merge import TensorFolder, merge_config, merge_state_dicts
    from prunekit.merge.darex import search_q
    from prunekit.metrics.perplexity import perplexity

    work = Path(args.work)
    tok = ms.prepare(work)  # merge_smollm2.py's base and fine-tunes, at its default settings
    src = ms.sources()
    evals = {k: ms.windows(tok, split_documents(d, "evaluation"), args.eval_windows, args.eval_seqlen, None)
             for k, d in src.items()}
    model = AutoModelForCausalLM.from_pretrained(str(work / "base"), dtype=torch.float32).eval()
    base_sd = load_file(str(work / "base" / "model.safetensors"))
    base_folder = TensorFolder(work / "base")

    def ppl(state: dict, key: str) -> float:
        model.load_state_dict(state, strict=False)
        return perplexity(model, evals[key], batch_size=4, progress=False)

    record: dict = {"settings": vars(args), "threads": 1, "base": {}, "finetuned": {}, "rows": []}
    out = Path(args.json)
    if args.merged:
        merged_runs(args, record, out, base_sd, base_folder, tok, ppl, work)
        return
    for key in args.finetunes:
        record["base"][key] = ppl(base_sd, key)
        ft_sd = load_file(str(work / f"ft-{key}" / "model.safetensors"))
        record["finetuned"][key] = ppl(ft_sd, key)
        print(f"{key}: base {record['base'][key]:.3f}, fine-tuned {record['finetuned'][key]:.3f}", flush=True)
        ft_folder = TensorFolder(work / f"ft-{key}")
        for density in args.densities:
            for seed in args.seeds:
                for variant, extra in VARIANTS.items():
                    config = merge_config("dare_linear", density=density, seed=seed, **extra)
                    t0, c0 = time.perf_counter(), time.process_time()
                    searched, summary = None, None
                    if variant == "darex":
                        windows = calibration_windows(tok, "pydocs", args.nsamples, args.seqlen, seed, say=lambda *_: None)
                        q, summary = search_q(base_folder, ft_folder, config, 0, windows,
                                              [n for n in base_sd if base_sd[n].is_floating_point()])
                        searched = [q]
                    merged = merge_state_dicts(base_sd, [ft_sd], config, searched=searched)
                    row = {"finetune": key, "density": density, "seed": seed, "variant": variant,
                           "merge_wall_s": time.perf_counter() - t0, "merge_cpu_s": time.process_time() - c0,
                           "ppl": ppl(merged, key)}
                    if summary:
                        row["search"] = summary
                    record["rows"].append(row)
                    print(f"{key} d={density:g} seed {seed} {variant:<6} ppl {row['ppl']:8.3f}" +
                          (f"  (q {summary['q']:.4f}: hidden-state error {summary['error']:.4f} vs DARE's "
                           f"{summary['error_dare']:.4f})" if summary else ""),
                          flush=True)
                    out.write_text(json.dumps(record, indent=2) + "\n")
    record = payload(record)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)


def merged_runs(args: argparse.Namespace, record: dict, out: Path, base_sd: dict, base_folder, tok, ppl, work: Path) -> None:
    """``--merged``: both fine-tunes merged by dare_ties, DARE's rescaling against DAREx-q's searched q."""
    from safetensors.torch import load_file

    from prunekit.datasets.text import calibration_windows
    from prunekit.merge import TensorFolder, merge_config, merge_state_dicts
    from prunekit.merge.darex import search_q

    fts = [load_file(str(work / f"ft-{k}" / "model.safetensors")) for k in ("A", "B")]
    folders = [TensorFolder(work / f"ft-{k}") for k in ("A", "B")]
    names = [n for n in base_sd if base_sd[n].is_floating_point()]
    for density in args.densities:
        for seed in args.seeds:
            for variant in ("dare", "darex"):
                config = merge_config("dare_ties", density=density, seed=seed, **VARIANTS[variant])
                t0 = time.process_time()
                searched = None
                if variant == "darex":
                    windows = calibration_windows(tok, "pydocs", args.nsamples, args.seqlen, seed, say=lambda *_: None)
                    searched = [search_q(base_folder, f, config, i, windows, names)[0] for i, f in enumerate(folders)]
                merged = merge_state_dicts(base_sd, fts, config, searched=searched)
                row = {"density": density, "seed": seed, "variant": variant, "q": searched,
                       "merge_cpu_s": time.process_time() - t0, "ppl_A": ppl(merged, "A"), "ppl_B": ppl(merged, "B")}
                row["geo"] = math.sqrt(row["ppl_A"] * row["ppl_B"])
                record["rows"].append(row)
                print(f"dare_ties d={density:g} seed {seed} {variant:<6} A {row['ppl_A']:.3f} B {row['ppl_B']:.3f} "
                      f"geo {row['geo']:.3f}" + (f" (q {searched[0]:.4f}, {searched[1]:.4f})" if searched else ""),
                      flush=True)
                out.write_text(json.dumps(record, indent=2) + "\n")
    for density in args.densities:
        cell = {(r["variant"], r["seed"]): r["geo"] for r in record["rows"] if r["density"] == density}
        diffs = [cell[("dare", s)] - cell[("darex", s)] for s in args.seeds]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
        mean = statistics.fmean(diffs)
        record.setdefault("verdicts", []).append(
            {"density": density, "dare_minus_darex_geo": mean, "se": se,
             "verdict": "held" if mean > 2 * se else ("reversed" if mean < -2 * se else "within noise")})
        print(f"density {density:g}: DARE − DAREx-q (geometric mean) {mean:+.3f} ± {se:.3f}")
    out.write_text(json.dumps(record, indent=2) + "\n")


def payload(record: dict) -> dict:
    """``record`` with what the results store reads (benchmarks/apps_papers.py): the benchmark's name, the model
    and one run per row (label ``<variant> @ <fine-tune> d=<density>``, seed, figures)."""
    runs = [{"label": f"{ARM[r['variant']]} @ {r['finetune']} d={r['density']:g}", "seed": r["seed"],
             "figures": {"ppl": r["ppl"], "neg_log_ppl": -math.log(r["ppl"]),
                         "q": r["search"]["q"] if "search" in r else (r["density"] if r["variant"] == "dare" else 1.0),
                         "merge_cpu_s": r["merge_cpu_s"]}} for r in record["rows"]]
    return {**record, "benchmark": "darex_smollm2", "model": "SmolLM2-135M-Instruct, two fine-tunes (merge_smollm2.py)",
            "verdicts": verdicts(record["rows"]), "runs": runs}


def verdicts(rows: list[dict]) -> list[dict]:
    """Per (fine-tune, density): DARE minus DAREx-q perplexity over the seeds (paired), mean ± standard error,
    and the verdict (held: DAREx-q lower by more than 2 standard errors)."""
    out = []
    for key in sorted({r["finetune"] for r in rows}):
        for density in sorted({r["density"] for r in rows}, reverse=True):
            cell = {(r["variant"], r["seed"]): r["ppl"] for r in rows if r["finetune"] == key and r["density"] == density}
            seeds = sorted({s for _, s in cell})
            diffs = [cell[("dare", s)] - cell[("darex", s)] for s in seeds if ("dare", s) in cell and ("darex", s) in cell]
            if not diffs:
                continue
            mean = statistics.fmean(diffs)
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
            verdict = "held" if mean > 2 * se else ("reversed" if mean < -2 * se else "within noise")
            out.append({"finetune": key, "density": density, "seeds": len(diffs), "dare_minus_darex": mean,
                        "se": se, "verdict": verdict})
    return out


def print_table(record: dict) -> None:
    rows = record["rows"]
    print("\n| fine-tune | density | " + " | ".join(LABELS.values()) + " | DARE − DAREx-q (paired) |")
    print("|---|---:|" + "---:|" * len(LABELS) + "---|")
    for v in record["verdicts"]:
        cells = []
        for variant in VARIANTS:
            vals = [r["ppl"] for r in rows if r["finetune"] == v["finetune"] and r["density"] == v["density"]
                    and r["variant"] == variant]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}")
        print(f"| {v['finetune']} | {v['density']:g} | " + " | ".join(cells) +
              f" | {v['dare_minus_darex']:+.3f} ± {v['se']:.3f} ({v['verdict']}) |")


if __name__ == "__main__":
    main()
