"""Image-level pruning of a soft-labelled ("distilled") Fashion-MNIST set ("Rethinking Large-scale Dataset
Compression").

A teacher is trained on ``--teacher-train`` images. The compressed set starts from a pool of ``--pool``
images per class; at each kept fraction a student trains for the same number of steps on the kept images
with soft labels (the teacher's logits, KL only: the mainstream distillation setting) or hard labels,
the images chosen per class at random, easiest or hardest by the teacher's EL2N. PCA: the easiest
4·k images per class combined 2×2 into k mosaics, hard labels (same image budget as k images).
Claims tested: (1) with soft labels, random images are as good as scored ones; (2) with hard labels only,
PCA (easiest + combine) beats random images at the same image budget.

    python benchmarks/apps_distilled.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from _apps_common import fmt, spread, write_results
from prunekit.apps.distilled import combine_images, select_per_class, teacher_el2n
from prunekit.data.distill import fit_distilled
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import SmallCNN
from prunekit.train import fit


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-train", type=int, default=5000)
    p.add_argument("--pool", type=int, default=100, help="images per class in the set being pruned")
    p.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.4])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("train").tensors
    test = load_fashion_mnist("test", limit=args.test)
    widths = (8, 16, 32)
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        teacher = SmallCNN((16, 32, 64))
        fit(teacher, TensorDataset(x[:args.teacher_train], y[:args.teacher_train]), epochs=2, lr=0.05, seed=seed,
            progress=False)
        rng = np.random.default_rng(seed)
        pool_idx = np.concatenate([rng.choice(np.flatnonzero(y[args.teacher_train:].numpy() == c), args.pool,
                                              replace=False) + args.teacher_train for c in range(10)])
        pool = TensorDataset(x[pool_idx], y[pool_idx])
        labels = pool.tensors[1].numpy()
        scores = teacher_el2n(teacher, pool)

        def student(data, soft: bool) -> float:
            torch.manual_seed(seed)
            m = SmallCNN(widths)
            bs = min(args.batch, len(data))
            epochs = args.steps * bs / len(data)
            if soft:
                fit_distilled(m, teacher, data, alpha=1.0, temperature=4.0, epochs=epochs, lr=0.05, batch_size=bs,
                              seed=seed, progress=False)
            else:
                fit(m, data, epochs=epochs, lr=0.05, batch_size=bs, seed=seed, progress=False)
            return accuracy(m, test)

        for keep in args.keep:
            configs = []
            for strategy in ("random", "easiest", "hardest"):
                idx = select_per_class(scores, labels, keep, strategy, seed=seed)
                for soft in (True, False):
                    configs.append((f"{strategy} {'soft' if soft else 'hard'} keep {keep:.2f}",
                                    Subset(pool, idx.tolist()), soft))
            k4 = min(1.0, 4 * keep)
            idx = select_per_class(scores, labels, k4, "easiest", seed=seed)
            # order each class's kept images easiest first, so each mosaic holds images of similar ease
            idx = idx[np.lexsort((scores[idx], labels[idx]))]
            configs.append((f"PCA easiest+combine hard keep {keep:.2f}",
                            combine_images(pool.tensors[0][idx], pool.tensors[1][idx], factor=2), False))
            for label, data, soft in configs:
                t0 = time.perf_counter()
                acc = student(data, soft)
                runs.append({"label": label, "seed": seed, "seconds": time.perf_counter() - t0,
                             "figures": {"accuracy": acc, "keep": keep, "images": len(data), "soft": soft}})
                print(f"seed {seed} {label}: {acc:.4f} ({len(data)} images)", flush=True)
        _save(args, runs, widths)
    summary = _save(args, runs, widths, db=args.db)
    for label, v in summary.items():
        print(f"{label}: {fmt(v['accuracy'])}")
    return summary


def _save(args, runs: list[dict], widths, db: str | None = None) -> dict:
    """Write what the seeds so far gave (a run cut short still leaves its results)."""
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        summary[label] = {"accuracy": spread(r["figures"]["accuracy"] for r in runs if r["label"] == label)}
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"widths": widths,
                                                                                   "teacher": (16, 32, 64)}
    write_results("apps_distilled", {"task": "fashion-mnist distilled-set pruning", "model": f"SmallCNN{widths}",
                                     "settings": settings, "runs": runs, "summary": summary}, db=db)
    return summary


if __name__ == "__main__":
    main()
