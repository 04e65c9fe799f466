"""Unstructured pruning of the DDPM's UNet at rising sparsity: where does it stop being free, and does plain
magnitude beat a data-aware score? (docs/papers.md row 27: "Efficient Pruning of Text-to-Image Models:
Insights from Pruning Stable Diffusion" reports that Stable Diffusion 2's UNet keeps its quality up to a
sparsity threshold and then drops suddenly, and that simple magnitude pruning beats more advanced scores.)

The base is the cached class-conditional Fashion-MNIST DDPM of ``diffusion_train.py``. Each method zeros the same
fraction of every in-scope weight tensor (``prunekit.prune_``, uniform allocation, no fine-tune):
``magnitude`` (|w|) and ``taylor`` ((g·w)² with the gradients of the denoising loss on ``--grad-batches``
batches of 16 training images noised at random timesteps: the data-aware score). Quality is FID-FMNIST,
KID and precision/recall over ``--n`` samples (balanced classes, ``--steps`` DDIM steps) against as many real
test images, each beside its noise floor (``prunekit.diffusion.metrics.sample_quality``). The seed draws the
samples' noise and Taylor's batches; magnitude pruning itself has no randomness. Unstructured zeros do not
change the UNet's MACs (dense kernels), so this measures quality only.

Rules, fixed before the run (the project's: a paired difference over seeds is held when its mean is above
2 standard errors):
- *works up to a threshold*: the largest sparsity s* up to which every level keeps FID-FMNIST within
  ``--free`` (10%) of the unpruned model's (mean over seeds, paired);
- *then collapses*: held when s* exists and the FID rise from s* to the next level is both above 2 standard
  errors and more than 3× the whole rise from the unpruned model to s*;
- *magnitude beats the data-aware score*: at each level, taylor − magnitude FID paired over seeds; held when
  magnitude is ahead by the rule at more levels than Taylor is, and behind by the rule at none.

    nice -n 10 python benchmarks/diffusion_sparsity_sweep.py                       # 3 seeds, 1,000 samples
    python benchmarks/diffusion_sparsity_sweep.py --n 50 --sparsities 0.3 0.6 --seeds 0 --out /tmp/sweep.json  # smoke

Writes benchmarks/results/diffusion/diffusion_sparsity_sweep.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import prunekit as pk
from prunekit.diffusion import fashion_mnist, load_unet
from prunekit.diffusion.ddpm import read_unet_meta, schedule_of
from prunekit.diffusion.metrics import CACHE, load_classifier, real_reference, sample_quality, write_json

OUT = Path(__file__).resolve().parent / "results" / "diffusion" / "diffusion_sparsity_sweep.json"


def denoising_batches(unet, x: torch.Tensor, y: torch.Tensor, batches: int, seed: int, size: int = 16) -> list:
    """``batches`` of (UNet inputs, target noise): training images noised at uniform random timesteps with the
    UNet's own schedule (the DDPM loss ``mse(eps_hat, eps)``)."""
    sch = schedule_of(unet)
    if sch.beta_schedule != "linear":
        raise ValueError(f"this benchmark noises with a linear beta schedule; the UNet uses {sch.beta_schedule!r}")
    abar = torch.cumprod(1 - torch.linspace(sch.beta_start, sch.beta_end, sch.num_train_timesteps), 0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        idx = torch.randint(0, len(x), (size,), generator=g)
        t = torch.randint(0, sch.num_train_timesteps, (size,), generator=g)
        eps = torch.randn(size, *x.shape[1:], generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        out.append(({"sample": a.sqrt() * x[idx] + (1 - a).sqrt() * eps, "timestep": t, "class_labels": y[idx]}, eps))
    return out


def paired(a: list[float], b: list[float]) -> dict:
    """Mean and standard error of b − a over seeds; ``held`` when the mean is above 2 standard errors."""
    d = [bi - ai for ai, bi in zip(a, b)]
    mean = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diffs": d, "mean": mean, "se": se, "held": bool(len(d) > 1 and mean > 2 * se)}


def verdicts(results: dict, free: float) -> dict:
    """The three rules of the module docstring, from the rows in ``results``."""
    by_seed = {int(k): v for k, v in results["dense"].items()}  # int keys in the run, str once read from JSON
    seeds = sorted(by_seed)
    dense = [by_seed[s]["fid"] for s in seeds]
    out: dict = {}
    levels = sorted({r["sparsity"] for r in results["runs"]})

    def fids(method: str, s: float) -> list[float] | None:
        rows = {int(r["seed"]): r["quality"]["fid"] for r in results["runs"]
                if r["method"] == method and r["sparsity"] == s}
        return [rows[k] for k in seeds] if all(k in rows for k in seeds) else None

    for method in sorted({r["method"] for r in results["runs"]}):
        curve = [(s, fids(method, s)) for s in levels if fids(method, s) is not None]
        free_upto = None
        for s, f in curve:
            if statistics.fmean(f) <= (1 + free) * statistics.fmean(dense):
                free_upto = s
            else:
                break
        rec: dict = {"threshold": free_upto,
                     "relative_fid": {str(s): statistics.fmean(f) / statistics.fmean(dense) - 1 for s, f in curve}}
        if free_upto is not None and free_upto != curve[-1][0]:
            i = [s for s, _ in curve].index(free_upto)
            at, nxt = curve[i][1], curve[i + 1][1]
            jump = paired(at, nxt)
            before = statistics.fmean(at) - statistics.fmean(dense)
            rec["collapse"] = {"next": curve[i + 1][0], "jump": jump, "rise_to_threshold": before,
                               "held": bool(jump["held"] and jump["mean"] > 3 * max(before, 0.0))}
        else:
            rec["collapse"] = {"held": False, "why": "no level keeps quality" if free_upto is None
                               else "quality kept at every level measured"}
        out[method] = rec
    if {"magnitude", "taylor"} <= {r["method"] for r in results["runs"]}:
        per = {}
        for s in levels:
            m, t = fids("magnitude", s), fids("taylor", s)
            if m and t:
                per[str(s)] = {"taylor_minus_magnitude": paired(m, t), "magnitude_minus_taylor": paired(t, m)}
        ahead = sum(v["taylor_minus_magnitude"]["held"] for v in per.values())
        behind = sum(v["magnitude_minus_taylor"]["held"] for v in per.values())
        out["magnitude_vs_taylor"] = {"per_level": per, "magnitude_ahead": ahead, "taylor_ahead": behind,
                                      "held": bool(ahead > behind and behind == 0)}
    return out


def merge(out: Path, parts: list[Path], free: float) -> int:
    """One results file from runs of other seeds (one process per seed), the verdicts recomputed over all of them.
    A seed's rows are taken only where its file holds every (method, sparsity) of the first file."""
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"--merge: no results file {', '.join(missing)}; run each seed first")
    data = [json.loads(Path(p).read_text()) for p in parts]
    keys = ("weights_sha256", "n", "ddim_steps", "floors")
    for d, p in zip(data[1:], parts[1:]):
        if any(d[k] != data[0][k] for k in keys):
            raise SystemExit(f"{p}: another model or protocol than {parts[0]}; not merged")
    grid = {(r["method"], r["sparsity"]) for r in data[0]["runs"]}
    merged = {**data[0], "dense": {}, "runs": [], "merged_from": [str(p) for p in parts]}
    for d in data:
        for seed in d["dense"]:
            rows = [r for r in d["runs"] if str(r["seed"]) == str(seed)]
            if {(r["method"], r["sparsity"]) for r in rows} != grid or seed in merged["dense"]:
                continue  # an unfinished seed, or one already taken
            merged["dense"][seed] = d["dense"][seed]
            merged["runs"] += rows
    merged["verdicts"] = verdicts(merged, free)
    merged["args"] = {**data[0]["args"], "seeds": sorted(int(s) for s in merged["dense"]), "out": str(out)}
    write_json(out, merged)
    print(f"wrote {out} (seeds {merged['args']['seeds']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=CACHE / "ddpm-fmnist-v3")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.25, 0.4])
    ap.add_argument("--methods", nargs="+", default=["magnitude", "taylor"], choices=["magnitude", "taylor", "random"])
    ap.add_argument("--n", type=int, default=1000, help="samples per FID (and real images per half)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of the samples")
    ap.add_argument("--grad-batches", type=int, default=8, help="Taylor: batches of 16 noised training images")
    ap.add_argument("--free", type=float, default=0.10, help="'quality kept': FID within this share of the unpruned")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="write --out from these results files (same model and settings, other seeds) and stop")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.out, args.merge, args.free)
    if not all(0.0 < s < 1.0 for s in args.sparsities):
        raise SystemExit(f"--sparsities must lie in (0, 1); got {args.sparsities}")
    torch.set_num_threads(1)
    base = load_unet(args.model)
    meta = read_unet_meta(args.model)
    x, y = fashion_mnist("train")
    net, ccard = load_classifier()
    ref = real_reference(net, args.n)
    results: dict = {"benchmark": "diffusion_sparsity_sweep", "model": str(args.model),
                     "weights_sha256": meta["weights_sha256"], "classifier": ccard, "n": args.n,
                     "ddim_steps": args.steps, "floors": ref.floors, "args": {**vars(args), "model": str(args.model),
                                                                              "out": str(args.out)},
                     "dense": {}, "runs": [], "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_start = time.perf_counter()

    def quality(unet, seed: int) -> dict:
        q = sample_quality(unet, n=args.n, steps=args.steps, seed=seed, classifier=net, reference=ref)
        print(f"    {q}", flush=True)
        return q.to_dict()

    for seed in args.seeds:
        results["dense"][seed] = quality(base, seed)
        data = denoising_batches(base, x, y, args.grad_batches, seed)
        for method in args.methods:
            for s in sorted(args.sparsities):
                u = copy.deepcopy(base)
                rep = pk.prune_(u, method, s, data=data if method == "taylor" else None,
                                loss_fn=F.mse_loss if method == "taylor" else None, seed=seed, progress=False)
                print(f"seed {seed} {rep}", flush=True)
                results["runs"].append({"seed": seed, "method": method, "sparsity": s,
                                        "achieved": rep.sparsity, "tensors": len(rep.layers), "quality": quality(u, seed)})
                write_json(args.out, results)
    results["verdicts"] = verdicts(results, args.free)
    results["seconds"] = time.perf_counter() - t_start
    write_json(args.out, results)
    print(json.dumps(results["verdicts"], indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
