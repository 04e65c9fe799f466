"""Group channel pruning + spatial attention distillation of a small FCOS-layout detector on Fashion-MNIST
mosaics ("Group channel pruning and spatial attention distilling for object detection").

TinyFCOS (randomly initialised) is trained on ``--train`` mosaics (``--canvas``² pixels, 1–2 items) with an
L1 penalty on BN scales; ``--sparsity`` of every coupled channel group is then removed by BN-scale importance
(structured.prune_, the three output convolutions kept); the pruned model is fine-tuned ``--finetune``
epochs with the detection loss alone, or with ``--distill`` × the spatial attention distillation loss
against the unpruned detector. mAP@0.5 on ``--test`` held-out mosaics (items from the test split).
Claims tested: after pruning and fine-tuning, mAP stays near the dense model's; attention distillation
recovers more than fine-tuning alone.

    python benchmarks/apps_detection.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _apps_common import fmt, spread, write_results
from prunekit.apps.detection import TinyFCOS, measure, mosaic_detection_set, train_detector_
from prunekit.datasets import load_fashion_mnist
from prunekit.structured import prune_ as structured_prune_


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--canvas", type=int, default=48)
    p.add_argument("--epochs", type=float, default=6.0)
    p.add_argument("--finetune", type=float, default=1.5)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--distill", type=float, default=5.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tr = load_fashion_mnist("train", limit=10000, normalize=False)
    te = load_fashion_mnist("test", limit=2000, normalize=False)
    runs = []
    for seed in args.seeds:
        x, t = mosaic_detection_set(*tr.tensors, n=args.train, canvas=args.canvas, seed=seed)
        xt, tt = mosaic_detection_set(*te.tensors, n=args.test, canvas=args.canvas, seed=seed + 100)
        torch.manual_seed(seed)
        dense = TinyFCOS()
        t0 = time.perf_counter()
        train_detector_(dense, x, t, epochs=args.epochs, lr=0.01, bn_l1=1e-4, seed=seed)
        results = {"dense": measure(dense, xt, tt)}
        pruned = copy.deepcopy(dense)
        structured_prune_(pruned, x[:2], sparsity=args.sparsity, importance="bn_scale",
                          ignore=[pruned.cls_logits, pruned.bbox_pred, pruned.centerness])
        results["pruned, no fine-tuning"] = measure(pruned, xt, tt)
        ft = copy.deepcopy(pruned)
        train_detector_(ft, x, t, epochs=args.finetune, lr=0.005, seed=seed + 1)
        results["pruned + fine-tuning"] = measure(ft, xt, tt)
        ad = copy.deepcopy(pruned)
        train_detector_(ad, x, t, epochs=args.finetune, lr=0.005, seed=seed + 1, teacher=dense, distill=args.distill)
        results["pruned + fine-tuning + attention distillation"] = measure(ad, xt, tt)
        seconds = time.perf_counter() - t0
        for label, f in results.items():
            runs.append({"label": label, "seed": seed, "seconds": seconds,
                         "figures": {"map50": f.map50, "params": f.params, "macs": f.macs}})
            print(f"seed {seed} {label}: mAP@0.5 {f.map50:.4f}, {f.params} params, {f.macs / 1e6:.2f} M MACs",
                  flush=True)
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r["figures"] for r in runs if r["label"] == label]
        summary[label] = {"map50": spread(f["map50"] for f in rs), "params": rs[0]["params"], "macs": rs[0]["macs"]}
        print(f"{label}: mAP@0.5 {fmt(summary[label]['map50'])}, params {rs[0]['params']}, MACs {rs[0]['macs']}")
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"importance": "bn_scale",
                                                                                   "bn_l1": 1e-4}
    write_results("apps_detection", {"task": "fashion-mnist mosaic detection", "model": "TinyFCOS(16,32,32)",
                                     "settings": settings, "runs": runs, "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
