"""DAREx-L2 ("DARE the Extreme", Deng et al., 2024): fine-tuning with AdamR, whose decay pulls the weights toward the
pretrained ones, so that DARE's random drop of the deltas survives extreme drop rates — against the same fine-tune
with plain AdamW.

One real fine-tune of SmolLM2-135M-Instruct per arm and seed: ``--steps`` × ``--batch`` × ``--seqlen`` tokens of the
library-reference half of Python's docs (``merge_smollm2.py``'s source A; seed s draws the windows and orders them),
every weight but the tied embeddings trained at ``--lr``. The arms differ only in the optimizer: AdamW without weight
decay, and ``prunekit.train.AdamR`` (L2) at each ``--lambdas`` value. Each fine-tune's delta is then pruned by DARE
(``dare_linear``, mask seed s) at each ``--densities`` value, put back on the base and scored by perplexity on held-out
windows of source A (files the fine-tunes never read). What the drop costs is DARE-pruned minus fine-tuned
perplexity.

A claim is decided per density by the paired difference over seeds of what the drop costs, DARE-pruned minus
fine-tuned perplexity (AdamW arm minus AdamR arm): held when AdamR's cost is lower by more than 2 standard errors.
What AdamR costs the fine-tune itself is paired and printed beside it. One torch thread.

    nice -n 10 python benchmarks/darex_adamr.py                                    # the README's table
    python benchmarks/darex_adamr.py --steps 2 --seeds 0 --eval-windows 2 --densities 0.1   # smoke run
    nice -n 10 python benchmarks/darex_adamr.py --darex-q --json benchmarks/results/darex_adamr_q.json

``--darex-q`` also prunes each fine-tune's delta with DAREx-q (``prunekit.merge.darex.search_q``: the rescale 1/q
searched on ``--nsamples`` × ``--seqlen`` calibration tokens, the paper's first repair) at each density, so the two
repairs are compared on the same fine-tunes, alone and together: does DAREx-q's rescale rescue the AdamW fine-tune's
large deltas, and does it add anything to AdamR's small ones (DARE's cost minus DAREx-q's, paired over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def arm_name(lam: float | None) -> str:
    return "adamw" if lam is None else f"adamr_l2_{lam:g}"


def delta_stats(base: dict, ft: dict) -> dict:
    """Mean |δ|, mean δ, std δ and max |δ| over the tensors the fine-tune changed (DARE's failure depends on the
    deltas' mean and variance)."""
    n, s1, s2, sm, mx = 0, 0.0, 0.0, 0.0, 0.0
    for name, w in ft.items():
        if not w.is_floating_point() or torch.equal(w, base[name]):
            continue
        d = (w - base[name]).double()
        n += d.numel()
        s1 += float(d.abs().sum())
        s2 += float((d * d).sum())
        sm += float(d.sum())
        mx = max(mx, float(d.abs().max()))
    mean = sm / n
    return {"params": n, "mean_abs": s1 / n, "mean": mean, "std": math.sqrt(max(s2 / n - mean * mean, 0.0)),
            "max_abs": mx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge-work", default="/tmp/prunekit-bench-merge", help="merge_smollm2.py's cache (the base)")
    ap.add_argument("--work", default="/tmp/prunekit-bench-adamr", help="the fine-tunes, one folder per arm and seed")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=4, help="steps of linear learning-rate warm-up")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.1])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.01])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "darex_adamr.json"))
    ap.add_argument("--table", action="store_true", help="only rewrite --json's verdicts and print its table")
    ap.add_argument("--darex-q", action="store_true", help="also DAREx-q (q searched) at every density")
    ap.add_argument("--nsamples", type=int, default=4, help="DAREx-q's calibration windows")
    ap.add_argument("--seqlen-q", type=int, default=256, help="DAREx-q's calibration window length")
    args = ap.parse_args()
    out = Path(args.json)
    if args.table:
        record = payload(json.loads(out.read_text()))
        out.write_text(json.dumps(record, indent=2) + "\n")
        print_table(record)
        return
    torch.set_num_threads(1)

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import merge_smollm2 as ms
    from prunekit.datasets.text import split_documents
    from prunekit.datasets.text import calibration_windows
    from prunekit.merge import TensorFolder, merge_config, merge_state_dicts
    from prunekit.merge.darex import search_q
    from prunekit.metrics.perplexity import perplexity
    from prunekit.train import AdamR

    mwork, work = Path(args.merge_work), Path(args.work)
    tok = ms.prepare(mwork)
    source = ms.sources()["A"]
    evals = ms.windows(tok, split_documents(source, "evaluation"), args.eval_windows, args.eval_seqlen, None)
    base_sd = load_file(str(mwork / "base" / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(mwork / "base"), dtype=torch.float32).eval()

    def ppl(state: dict) -> float:
        model.load_state_dict(state, strict=False)
        return perplexity(model, evals, batch_size=4, progress=False)

    record: dict = {"settings": vars(args), "threads": 1, "base": ppl(base_sd), "fits": []}
    print(f"base {record['base']:.3f}", flush=True)
    for seed in args.seeds:
        train = ms.windows(tok, split_documents(source, "calibration"), args.steps * args.batch, args.seqlen, seed)
        for lam in [None, *args.lambdas]:
            name = arm_name(lam)
            folder = work / f"{name}-seed{seed}"
            if folder.exists():
                shutil.rmtree(folder)
            make = None if lam is None else (lambda params, lr, lam=lam: AdamR(params, lr=lr, reg="l2", reg_weight=lam))
            info = ms.finetune(mwork / "base", folder, train, args.steps, args.batch, args.lr, seed, optimizer=make,
                               warmup=args.warmup)
            ft_sd = load_file(str(folder / "model.safetensors"))
            run = {"arm": name, "lambda": lam, "seed": seed, "finetune": info, "delta": delta_stats(base_sd, ft_sd),
                   "finetuned": ppl(ft_sd), "dare": {}}
            for density in args.densities:
                t0 = time.process_time()
                merged = merge_state_dicts(base_sd, [ft_sd], merge_config("dare_linear", density=density, seed=seed))
                run["dare"][f"{density:g}"] = {"ppl": ppl(merged), "merge_cpu_s": time.process_time() - t0}
                if args.darex_q:
                    t0 = time.process_time()
                    config = merge_config("dare_linear", density=density, seed=seed, q="search")
                    windows = calibration_windows(tok, "pydocs", args.nsamples, args.seqlen_q, seed, say=lambda *_: None)
                    q, summary = search_q(TensorFolder(mwork / "base"), TensorFolder(folder), config, 0, windows,
                                          [n for n in base_sd if base_sd[n].is_floating_point()])
                    merged = merge_state_dicts(base_sd, [ft_sd], config, searched=[q])
                    run.setdefault("darex_q", {})[f"{density:g}"] = {
                        "ppl": ppl(merged), "q": q, "error": summary["error"], "error_dare": summary["error_dare"],
                        "search_cpu_s": time.process_time() - t0}
            record["fits"].append(run)
            print(f"seed {seed} {name:<16} loss {info['first_loss']:.3f} → {info['last_loss']:.3f} "
                  f"({info['cpu_s']:.0f} s CPU), mean|δ| {run['delta']['mean_abs']:.2e} std {run['delta']['std']:.2e}, "
                  f"fine-tuned {run['finetuned']:.3f}, DARE " +
                  ", ".join(f"{d}: {v['ppl']:.3f}" for d, v in run["dare"].items()) +
                  ("; DAREx-q " + ", ".join(f"{d}: {v['ppl']:.3f} (q {v['q']:.4f})" for d, v in run["darex_q"].items())
                   if "darex_q" in run else ""), flush=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(folder)  # 430 MB a fine-tune; the figures are in the record
    record = payload(record)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)


def _paired(diffs: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return mean, se


def payload(record: dict) -> dict:
    """The per-arm means and, per AdamR arm and density, the paired verdict against AdamW."""
    runs = record["fits"]
    arms = sorted({r["arm"] for r in runs}, key=lambda a: (a != "adamw", a))
    summary, verdicts = {}, []
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        row = {"seeds": [r["seed"] for r in rs], "finetuned": statistics.fmean(r["finetuned"] for r in rs),
               "mean_abs_delta": statistics.fmean(r["delta"]["mean_abs"] for r in rs),
               "std_delta": statistics.fmean(r["delta"]["std"] for r in rs),
               "finetune_cpu_s": statistics.fmean(r["finetune"]["cpu_s"] for r in rs), "dare": {}}
        for d in rs[0]["dare"]:
            ppls = [r["dare"][d]["ppl"] for r in rs]
            cost = [r["dare"][d]["ppl"] - r["finetuned"] for r in rs]
            row["dare"][d] = {"ppl": statistics.fmean(ppls), "ppl_min": min(ppls), "ppl_max": max(ppls),
                              "cost": statistics.fmean(cost), "cost_min": min(cost), "cost_max": max(cost)}
        if all("darex_q" in r for r in rs):
            row["darex_q"] = {}
            for d in rs[0]["darex_q"]:
                cost = [r["darex_q"][d]["ppl"] - r["finetuned"] for r in rs]
                row["darex_q"][d] = {"ppl": statistics.fmean(r["darex_q"][d]["ppl"] for r in rs),
                                     "cost": statistics.fmean(cost), "cost_min": min(cost), "cost_max": max(cost),
                                     "q": [r["darex_q"][d]["q"] for r in rs]}
                # DAREx-q's repair on this arm's own fine-tunes: DARE's ppl minus DAREx-q's, paired by seed
                mean, se = _paired([r["dare"][d]["ppl"] - r["darex_q"][d]["ppl"] for r in rs])
                row["darex_q"][d].update(dare_minus_darex_q=mean, se=se, held=bool(len(rs) > 1 and mean > 2 * se))
        summary[arm] = row
    plain = {r["seed"]: r for r in runs if r["arm"] == "adamw"}
    for arm in arms[1:]:
        for d in summary[arm]["dare"]:
            cost = lambda r: r["dare"][d]["ppl"] - r["finetuned"]  # noqa: E731  what the drop costs
            pairs = [(cost(plain[r["seed"]]), cost(r)) for r in runs if r["arm"] == arm and r["seed"] in plain]
            mean, se = _paired([a - b for a, b in pairs])
            ft = _paired([plain[r["seed"]]["finetuned"] - r["finetuned"] for r in runs
                          if r["arm"] == arm and r["seed"] in plain])
            verdicts.append({"arm": arm, "density": d, "seeds": len(pairs), "cost_adamw_minus_adamr": mean, "se": se,
                             "finetuned_adamw_minus_adamr": ft[0], "finetuned_se": ft[1],
                             "held": bool(len(pairs) > 1 and mean > 2 * se)})
    record["summary"], record["verdicts"] = summary, verdicts
    label = {"adamw": "AdamW"} | {a: f"AdamR-L2 λ={a.rsplit('_', 1)[1]}" for a in arms[1:]}
    with_q = any("darex_q" in r for r in runs)  # the DAREx-q comparison is its own benchmark in the results store
    record["benchmark"], record["model"] = "darex_adamr_q" if with_q else "darex_adamr", "SmolLM2-135M-Instruct"
    record["runs"] = [{"label": f"{label[r['arm']]} @ density={d}", "seed": r["seed"],
                       "figures": {"ppl": v["ppl"], "finetuned": r["finetuned"], "drop_cost": v["ppl"] - r["finetuned"],
                                   "neg_drop_cost": r["finetuned"] - v["ppl"], "mean_abs_delta": r["delta"]["mean_abs"]}}
                      for r in runs for d, v in r["dare"].items()]
    record["runs"] += [{"label": f"{label[r['arm']]} + DAREx-q @ density={d}", "seed": r["seed"],
                        "figures": {"ppl": v["ppl"], "finetuned": r["finetuned"], "drop_cost": v["ppl"] - r["finetuned"],
                                    "neg_drop_cost": r["finetuned"] - v["ppl"], "q": v["q"],
                                    "mean_abs_delta": r["delta"]["mean_abs"]}}
                       for r in runs for d, v in r.get("darex_q", {}).items()]
    return record


def print_table(record: dict) -> None:
    s = record["settings"]
    print(f"\nbase {record['base']:.3f}; {s['steps']} steps × {s['batch']} × {s['seqlen']} tokens at lr {s['lr']:g}, "
          f"seeds {s['seeds']}, {s['eval_windows']} × {s['eval_seqlen']} held-out tokens\n")
    ds = list(next(iter(record["summary"].values()))["dare"])
    print("| optimizer | mean abs δ | std δ | fine-tuned | " +
          " | ".join(f"DARE at density {d} (its cost, min–max)" for d in ds) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(ds))
    for arm, row in record["summary"].items():
        print(f"| {arm} | {row['mean_abs_delta']:.2e} | {row['std_delta']:.2e} | {row['finetuned']:.3f} | " +
              " | ".join(f"{row['dare'][d]['ppl']:.3f} ({row['dare'][d]['cost']:+.3f}, {row['dare'][d]['cost_min']:+.3f}"
                         f" – {row['dare'][d]['cost_max']:+.3f})" for d in ds) + " |")
    for arm, row in record["summary"].items():
        for d, v in row.get("darex_q", {}).items():
            print(f"| {arm} + DAREx-q | | | {row['finetuned']:.3f} | density {d}: {v['ppl']:.3f} ({v['cost']:+.3f}, "
                  f"{v['cost_min']:+.3f} – {v['cost_max']:+.3f}); q {', '.join(f'{q:.4f}' for q in v['q'])}; DARE − "
                  f"DAREx-q {v['dare_minus_darex_q']:+.3f} ± {v['se']:.3f}: {'held' if v['held'] else 'not held'} |")
    for v in record["verdicts"]:
        print(f"{v['arm']} at density {v['density']}: the drop's cost, AdamW − AdamR {v['cost_adamw_minus_adamr']:+.3f} "
              f"± {v['se']:.3f} (fine-tuned, AdamW − AdamR {v['finetuned_adamw_minus_adamr']:+.3f} ± "
              f"{v['finetuned_se']:.3f}): "
              f"{'held' if v['held'] else 'not held'}")


if __name__ == "__main__":
    main()
