"""EMO joint pruning: NSGA-II over per-layer sparsities vs one uniform or one global threshold
("An EMO Joint Pruning with Multiple Sub-networks").

An MLP (64-256-128-10) is trained on scikit-learn's digits; NSGA-II searches the per-layer sparsities of its
three Linear layers, minimising (error on a 300-image search split of the training set, density) with no
fine-tuning; the final front is measured on the test split. Baselines at 20 densities each: the same sparsity
in every layer (uniform), and one global magnitude threshold (global). Compared by the hypervolume of each
(test error, density) front up to (1, 1) — larger is better.
Claim tested: one multi-objective search gives a front of sub-networks at least as good as the uniform
and global magnitude allocations at every budget.

    python benchmarks/apps_emo.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from _apps_common import fmt, spread, write_results
from prunekit import prune_
from prunekit.apps.emo import hypervolume_2d, masked_copy, non_dominated_fronts, search_sparsities
from prunekit.datasets.digits import load_digits
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import MLP
from prunekit.train import fit

LAYERS = ["body.0", "body.2", "head"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=24)
    p.add_argument("--generations", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, test = load_digits("train"), load_digits("test")
    x, y = train.tensors
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = MLP(64, (256, 128), 10)
        fit(model, train, epochs=30, lr=0.05, batch_size=32, seed=seed, progress=False)
        rng = np.random.default_rng(seed)
        idx = torch.from_numpy(rng.choice(len(x), 300, replace=False))
        search = TensorDataset(x[idx], y[idx])
        sizes = np.array([dict(model.named_modules())[n].weight.numel() for n in LAYERS], dtype=float)
        t0 = time.perf_counter()
        res = search_sparsities(model, LAYERS, lambda m: 1 - accuracy(m, search), population=args.population,
                                generations=args.generations, seed=seed)
        seconds = time.perf_counter() - t0
        emo = np.array([[1 - accuracy(masked_copy(model, LAYERS, res.sparsities[i]), test), res.objectives[i][1]]
                        for i in res.front])
        grid = np.linspace(0.0, 0.98, 20)
        uniform = np.array([[1 - accuracy(masked_copy(model, LAYERS, [s] * 3), test), 1 - s] for s in grid])
        glob = []
        for s in grid:
            m = masked_copy(model, LAYERS, [0.0] * 3)
            if s > 0:
                prune_(m, "magnitude", float(s), allocation="global", scope={"include": LAYERS, "skip_output": False}, progress=False)
            dens = sum(float(dict(m.named_modules())[n].weight.ne(0).sum()) for n in LAYERS) / sizes.sum()
            glob.append([1 - accuracy(m, test), dens])
        glob = np.array(glob)
        hv = {name: hypervolume_2d(pts[non_dominated_fronts(pts)[0]])
              for name, pts in (("EMO", emo), ("uniform", uniform), ("global", glob))}
        for name, pts in (("EMO", emo), ("uniform", uniform), ("global", glob)):
            runs.append({"label": name, "seed": seed, "seconds": seconds if name == "EMO" else 0.0,
                         "figures": {"hypervolume": hv[name], "points": pts.tolist(),
                                     "evaluations": res.evaluations if name == "EMO" else len(grid)}})
        print(f"seed {seed}: hypervolume EMO {hv['EMO']:.4f}, uniform {hv['uniform']:.4f}, global {hv['global']:.4f} "
              f"({res.evaluations} evaluations, {seconds:.0f}s)", flush=True)
    summary = {}
    for label in ("EMO", "uniform", "global"):
        summary[label] = {"hypervolume": spread(r["figures"]["hypervolume"] for r in runs if r["label"] == label)}
        print(f"{label}: hypervolume {fmt(summary[label]['hypervolume'])}")
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"model": "MLP(64, (256, 128), 10)"}
    write_results("apps_emo", {"task": "digits", "model": "MLP(64,(256,128),10)", "settings": settings, "runs": runs,
                               "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
