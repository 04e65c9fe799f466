"""Robustness of pruned CNNs under common corruptions of Fashion-MNIST ("Understanding Robustness Lottery").

A dense SmallCNN is trained; then, each to the same total budget of epochs:
- dense: trained ``--finetune`` more epochs;
- magnitude: global magnitude pruning to ``--sparsity`` of the trained model, fine-tuned;
- SNIP: pruned at initialization (one batch) to ``--sparsity``, trained the whole budget;
- structured: ``--channels`` of the channels removed (L1, structured.prune_), fine-tuned.
Each model's accuracy on clean test images and under Gaussian noise, blur and contrast at severities 1, 3, 5.
Claim tested: pruning methods differ in corruption robustness, and some pruned models are as robust as
(or more than) the dense one relative to their clean accuracy.

    python benchmarks/apps_robustness.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from _apps_common import fmt, spread, write_results
from prunekit import prune_
from prunekit.apps.robustness import robustness
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import SmallCNN
from prunekit.structured import prune_ as structured_prune_
from prunekit.train import fit


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--finetune", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--channels", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train = load_fashion_mnist("train", limit=args.train)
    test = load_fashion_mnist("test", limit=args.test)
    widths = (8, 16, 32)
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        dense = SmallCNN(widths)
        fit(dense, train, epochs=args.epochs, lr=0.05, seed=seed, batch_size=32, progress=False)
        models: dict[str, nn.Module] = {}
        m = copy.deepcopy(dense)
        fit(m, train, epochs=args.finetune, lr=0.01, seed=seed + 1, batch_size=32, progress=False)
        models["dense"] = m
        m = copy.deepcopy(dense)
        prune_(m, "magnitude", args.sparsity, allocation="global", progress=False)
        fit(m, train, epochs=args.finetune, lr=0.01, seed=seed + 1, batch_size=32, progress=False)
        models[f"magnitude {args.sparsity:.2f}"] = m
        torch.manual_seed(seed)
        m = SmallCNN(widths)
        x, y = train.tensors
        prune_(m, "snip", args.sparsity, data=[(x[:512], y[:512])], loss_fn=nn.functional.cross_entropy,
               progress=False)
        fit(m, train, epochs=args.epochs + args.finetune, lr=0.05, seed=seed, batch_size=32, progress=False)
        models[f"SNIP {args.sparsity:.2f}"] = m
        m = copy.deepcopy(dense)
        structured_prune_(m, x[:8], sparsity=args.channels, importance="l1", ignore=[m.fc])
        fit(m, train, epochs=args.finetune, lr=0.01, seed=seed + 1, batch_size=32, progress=False)
        models[f"structured channels {args.channels:.2f}"] = m
        for label, model in models.items():
            t0 = time.perf_counter()
            rep = robustness(model.eval(), test, severities=(1, 3, 5), seed=seed)
            figs = {"clean": rep.clean, "mean_corrupted": rep.mean_corrupted, "relative": rep.relative,
                    **rep.corrupted, "params": sum(p.numel() for p in model.parameters())}
            runs.append({"label": label, "seed": seed, "figures": figs, "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {label}: clean {rep.clean:.4f}, corrupted {rep.mean_corrupted:.4f}, "
                  f"relative {rep.relative:.3f}", flush=True)
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r["figures"] for r in runs if r["label"] == label]
        summary[label] = {k: spread(f[k] for f in rs) for k in rs[0] if k != "params"}
        print(f"{label}: clean {fmt(summary[label]['clean'])}, corrupted {fmt(summary[label]['mean_corrupted'])}, "
              f"relative {fmt(summary[label]['relative'], 3)}")
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"widths": widths,
                                                                                   "severities": [1, 3, 5]}
    write_results("apps_robustness", {"task": "fashion-mnist corruptions", "model": f"SmallCNN{widths}",
                                      "settings": settings, "runs": runs, "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
