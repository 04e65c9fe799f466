"""Diff-Pruning of prunekit's own Fashion-MNIST DDPM at about half the MACs, against magnitude (l1) and random
channel pruning at equal MACs; FID-FMNIST before/after with its noise floor, the fine-tune cost as a fraction
of the training cost, and the sampling speed-up measured (paired, interleaved).

    python benchmarks/diffusion_prune.py --n 5000 --ft-steps 300 --ft-all --skip-before --seeds 0   # one seed of the README table
    python benchmarks/diffusion_prune.py --insights                 # + which blocks / importance hurt least

Needs the model of benchmarks/diffusion_train.py (~/.cache/prunekit/diffusion/ddpm-fmnist-v3). Seeds can run in
separate processes (``--seeds 0 --out-name diffusion_prune_s0.json``) and are joined by ``--merge
diffusion_prune_s0.json diffusion_prune_s1.json …`` into diffusion_prune.json. FID-FMNIST is
computed over a Fashion-MNIST classifier's penultimate features (not Inception), on --n samples against --n real
test images; the floor is the same metric between two disjoint halves of the real test set of the same size.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from prunekit.bench.papers import combine, paired_verdict
from prunekit.diffusion import TrainConfig, fashion_mnist, load_unet, train_ddpm_
from prunekit.diffusion.ddpm import read_unet_meta
from prunekit.diffusion.diffpruning import DiffPruningConfig, diff_prune_
from prunekit.diffusion.metrics import (load_classifier, real_reference, sample_quality, sampling_time, save_grid,
                                        unet_cost, write_json)

PARTS = ("down", "mid", "up")
INSIGHT_IMPORTANCES = ("l1", "diff-pruning", "random")
CACHE = Path.home() / ".cache" / "prunekit" / "diffusion" / "ddpm-fmnist-v3"
OUT = Path(__file__).parent / "results" / "diffusion"


def insight_verdicts(insights: list[dict]) -> dict:
    """The insights' two claims, paired over the seeds both sides of a comparison measured (a difference is
    ``held`` when its mean is above 2 standard errors, :func:`prunekit.bench.papers.paired_verdict`):
    *the middle block costs least, whatever the importance* (down − middle and up − middle FID-FMNIST, for every
    importance), and per part *which importance hurts least* (each pair's FID difference; ``ahead`` names the
    importance whose FID is below both others', held on both, else None)."""
    fid: dict[tuple[str, str], dict[int, float]] = {}
    for r in insights:
        if "quality" in r:
            fid.setdefault(("+".join(r["blocks"]), r["importance"]), {})[int(r["seed"])] = r["quality"]["fid"]

    def pair(a: tuple[str, str], b: tuple[str, str]) -> dict:
        seeds = sorted(set(fid.get(a, {})) & set(fid.get(b, {})))
        diffs = [fid[a][s] - fid[b][s] for s in seeds]
        return {"seeds": seeds, "diffs": diffs, "verdict": paired_verdict(diffs)}

    middle = {f"{part} - mid, {imp}": pair((part, imp), ("mid", imp))
              for imp in INSIGHT_IMPORTANCES for part in ("down", "up")}
    least = {}
    for part in PARTS:
        pairs = {f"{b} - {a}": pair((part, b), (part, a)) for a in INSIGHT_IMPORTANCES for b in INSIGHT_IMPORTANCES
                 if a != b}
        ahead = [a for a in INSIGHT_IMPORTANCES
                 if all(pairs[f"{b} - {a}"]["verdict"] == "held" for b in INSIGHT_IMPORTANCES if b != a)]
        least[part] = {"ahead": ahead[0] if ahead else None, "pairs": pairs}
    return {"middle_costs_least": {"verdict": combine(v["verdict"] for v in middle.values()), "pairs": middle},
            "least_harmful_importance": least}


def merge(folder: Path, names: list[str], out_name: str) -> int:
    """One result file from per-seed ones run in separate processes (same model, samples and DDIM steps)."""
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"cannot merge: {', '.join(missing)} not found in {folder} (give the per-seed files' names)")
    parts = [json.loads((folder / n).read_text()) for n in names]
    first = parts[0]
    for p in parts[1:]:
        same = all(p[k] == first[k] for k in ("weights_sha256", "n", "ddim_steps"))
        if not same:
            raise SystemExit(f"cannot merge: {names} were run on different models, sample counts or DDIM steps")
    merged = {**first, "runs": [r for p in parts for r in p["runs"]], "merged_from": names,
              "base": {**first["base"], "quality": {k: v for p in parts for k, v in p["base"]["quality"].items()}}}
    timed = [p["sampling_time"] for p in parts if "sampling_time" in p]
    if timed:
        merged["sampling_time"] = timed[0]
    insights = [i for p in parts for i in p.get("insights", [])]
    if insights:
        merged["insights"] = insights
        merged["insight_verdicts"] = insight_verdicts(insights)
    write_json(folder / out_name, merged)
    print(f"wrote {folder / out_name} ({len(merged['runs'])} runs, seeds {sorted(merged['base']['quality'])})")
    return 0


def reused_base_quality(path: Path, results: dict, seeds: list[int]) -> dict[int, dict]:
    """The unpruned model's quality for ``seeds`` from an earlier result file, refused unless it was measured on
    the same weights, sample count and DDIM steps (sampling is seeded, so it would give the same figures)."""
    old = json.loads(path.read_text())
    for k in ("weights_sha256", "n", "ddim_steps"):
        if old.get(k) != results[k]:
            raise SystemExit(f"--reuse-base {path}: its {k} is {old.get(k)!r}, this run's is {results[k]!r}; "
                             "reuse only a file of the same model, --n and --steps")
    found = {int(s): q for s, q in old["base"]["quality"].items() if int(s) in seeds}
    print(f"unpruned quality for seeds {sorted(found)} reused from {path}", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=CACHE)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=200, help="samples per FID (and real images per half)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps for the FID samples")
    ap.add_argument("--ft-steps", type=int, default=30, help="fine-tune steps after pruning")
    ap.add_argument("--ft-ema", type=float, default=0.99, help="EMA decay of the fine-tune (warmed up)")
    ap.add_argument("--skip-before", action="store_true",
                    help="measure fine-tuned models only after their fine-tune (saves one sampling each)")
    ap.add_argument("--ft-all", action="store_true", help="fine-tune the l1 and random models too")
    ap.add_argument("--stride", type=int, default=50, help="Diff-Pruning: every STRIDE-th timestep")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds to run (0); none with --insights for the insights alone")
    ap.add_argument("--out-name", default="diffusion_prune.json", help="results file name under --out")
    ap.add_argument("--importances", nargs="+", default=["diff-pruning", "l1", "random"],
                    choices=["diff-pruning", "l1", "random"], help="the importances to prune with (all three)")
    ap.add_argument("--reuse-base", type=Path, default=None, metavar="FILE",
                    help="take the unpruned model's quality per seed from this earlier result file (same model, "
                         "--n and --steps: checked) instead of sampling it again")
    ap.add_argument("--insights", action="store_true", help="down/mid/up × importance at equal MACs, no fine-tune")
    ap.add_argument("--insight-macs", type=float, default=0.08)
    ap.add_argument("--insight-seeds", type=int, nargs="+", default=[0],
                    help="--insights: the seeds (gradient batch, random importance, samples' noise)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                    help="only merge these per-seed result files (names under --out) into --out-name, then stop")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.out, args.merge, args.out_name)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_unet(args.model)
    meta = read_unet_meta(args.model)
    card = meta["card"]
    trained = {"seconds": card.get("total_seconds") or card["train_report"]["seconds"],
               "images_seen": card.get("total_images_seen") or card["train_report"]["images_seen"]}
    x, y = fashion_mnist("train")
    net, ccard = load_classifier()
    ref = real_reference(net, args.n)
    results: dict = {"model": str(args.model), "weights_sha256": meta["weights_sha256"], "train": trained,
                     "classifier": ccard, "n": args.n, "ddim_steps": args.steps, "floors": ref.floors, "runs": []}

    def quality(unet, seed: int) -> dict:
        t0 = time.perf_counter()
        q = sample_quality(unet, n=args.n, steps=args.steps, seed=seed, classifier=net, reference=ref)
        print(f"    {q} [{time.perf_counter() - t0:.0f}s]", flush=True)
        return q.to_dict()

    base_q = reused_base_quality(args.reuse_base, results, args.seeds) if args.reuse_base else {}
    base_q |= {s: quality(base, s) for s in args.seeds if s not in base_q}
    results["base"] = {**unet_cost(base), "quality": base_q}
    if not args.reuse_base:
        save_grid(base, args.out / "base.png", per_class=8, steps=args.steps)
    results["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for seed in args.seeds:
        pruned = {}
        for imp in args.importances:
            u = copy.deepcopy(base)
            rep = diff_prune_(u, x, y, DiffPruningConfig(importance=imp, macs_sparsity=args.macs, batch_size=16,
                                                          timestep_stride=args.stride, seed=seed))
            print(f"seed {seed} {rep}", flush=True)
            tuned = imp == "diff-pruning" or args.ft_all
            row = {"seed": seed, "importance": imp, "prune": rep.to_dict(), **unet_cost(u)}
            if not tuned or not args.skip_before:
                row["quality"] = quality(u, seed)
            if tuned:
                cfg = TrainConfig(steps=args.ft_steps, batch_size=64, lr=5e-4, ema_decay=args.ft_ema, warmup_steps=5,
                                  seed=seed, **meta["schedule"])
                ft = train_ddpm_(u, x, y, cfg, progress=sys.stderr.isatty())
                print(f"    fine-tune: {ft}", flush=True)
                row["finetune"] = ft.to_dict()
                row["finetune_cost"] = {"seconds_fraction": ft.seconds / trained["seconds"],
                                        "images_fraction": ft.images_seen / trained["images_seen"]}
                row["quality_finetuned"] = quality(u, seed)
            results["runs"].append(row)
            pruned[imp] = u
            write_json(args.out / args.out_name, results)
        if seed == args.seeds[0] and "diff-pruning" in pruned:
            save_grid(pruned["diff-pruning"], args.out / f"diff_pruning_ft{args.ft_steps}_s{seed}.png", per_class=8, steps=args.steps)
            cmp = sampling_time({"dense": base, "diff-pruning": pruned["diff-pruning"]}, n=10, steps=args.steps,
                                budget_s=90)
            print(cmp, flush=True)
            results["sampling_time"] = cmp.to_dict()
            write_json(args.out / args.out_name, results)
    if args.insights:
        results["insights"] = []
        for seed in args.insight_seeds:
            for blocks in (("down",), ("mid",), ("up",)):
                for imp in ("l1", "diff-pruning", "random"):
                    u = copy.deepcopy(base)
                    try:
                        rep = diff_prune_(u, x, y, DiffPruningConfig(importance=imp, macs_sparsity=args.insight_macs,
                                                                      blocks=blocks, batch_size=16, seed=seed,
                                                                      timestep_stride=args.stride))
                    except ValueError as exc:
                        results["insights"].append({"blocks": blocks, "importance": imp, "seed": seed,
                                                    "error": str(exc)})
                        continue
                    print(f"insight seed {seed} {rep}", flush=True)
                    results["insights"].append({"blocks": blocks, "importance": imp, "seed": seed,
                                                "macs_removed": rep.macs_removed, "quality": quality(u, seed)})
                    write_json(args.out / args.out_name, results)
        results["insight_verdicts"] = insight_verdicts(results["insights"])
    write_json(args.out / args.out_name, results)
    print(f"wrote {args.out / args.out_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
