"""Transfer-oriented source-set pruning on Fashion-MNIST ("Selectivity Drives Productivity").

Source task: Fashion-MNIST classes 0 1 2 3 4 5 8 (T-shirt, Trouser, Pullover, Dress, Coat, Sandal, Bag);
target task: classes 6 7 9 (Shirt, Sneaker, Ankle boot) with only ``--target-train`` labelled images.
A surrogate trained on the whole source set scores the source classes by label mapping (LM) or feature
mapping (FM); a fresh model is pre-trained ``--pretrain-epochs`` on the kept classes (so fewer classes =
fewer steps), then fine-tuned end to end on the target set with a new head. Compared at each kept
fraction: LM, FM, random classes; and the full source set and no pre-training.
Claim tested: LM/FM-pruned source sets transfer at least as well as random class subsets of the same
size, and close to the full source set.

    python benchmarks/apps_transfer.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from _apps_common import fmt, spread, write_results
from prunekit.apps.transfer import feature_mapping_scores, keep_source_classes, label_mapping_scores
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import SmallCNN
from prunekit.train import fit

SOURCE, TARGET = (0, 1, 2, 3, 4, 5, 8), (6, 7, 9)


def _relabel(x, y, classes, per_class=None, offset=0):
    rows = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        rows.append(idx[offset: offset + per_class] if per_class else idx)
    idx = torch.cat(rows)
    mapping = {c: i for i, c in enumerate(classes)}
    return TensorDataset(x[idx], torch.tensor([mapping[int(v)] for v in y[idx]]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-per-class", type=int, default=400)
    p.add_argument("--target-train", type=int, default=30, help="labelled target images per class")
    p.add_argument("--pretrain-epochs", type=float, default=2.0)
    p.add_argument("--finetune-epochs", type=float, default=10.0)
    p.add_argument("--keep", type=float, nargs="+", default=[2 / 7, 4 / 7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("train").tensors
    xt, yt = load_fashion_mnist("test").tensors
    source = _relabel(x, y, SOURCE, args.source_per_class)
    target_train = _relabel(x, y, TARGET, args.target_train, offset=1000)
    target_test = _relabel(xt, yt, TARGET)
    src_labels = source.tensors[1].numpy()
    widths = (8, 16, 32)
    runs = []

    def transfer(pre_idx, seed: int) -> float:
        torch.manual_seed(seed)
        model = SmallCNN(widths, classes=len(SOURCE))
        if pre_idx is not None:
            fit(model, Subset(source, pre_idx.tolist()), epochs=args.pretrain_epochs, lr=0.05, seed=seed,
                batch_size=32, progress=False)
        model.fc = nn.Linear(widths[-1], len(TARGET))
        fit(model, target_train, epochs=args.finetune_epochs, lr=0.02, batch_size=16, seed=seed, progress=False)
        return accuracy(model, target_test)

    for seed in args.seeds:
        torch.manual_seed(seed + 1000)
        surrogate = SmallCNN(widths, classes=len(SOURCE))
        fit(surrogate, source, epochs=1.0, lr=0.05, seed=seed + 1000, batch_size=32, progress=False)
        target_inputs = TensorDataset(target_train.tensors[0], target_train.tensors[1])
        scores = {"LM": label_mapping_scores(surrogate, target_inputs, len(SOURCE)),
                  "FM": feature_mapping_scores(surrogate, source, src_labels, target_inputs, n_clusters=len(TARGET),
                                               seed=seed)}
        rng = np.random.default_rng(seed)
        scores["random"] = rng.random(len(SOURCE))
        configs = [("no pre-training", None, 0.0), ("full source", np.arange(len(source)), 1.0)]
        for keep in args.keep:
            for name, s in scores.items():
                classes, idx = keep_source_classes(s, src_labels, keep)
                configs.append((f"{name} keep {keep:.2f}", idx, keep, [SOURCE[c] for c in classes]))
        for label, idx, keep, *kept in configs:
            t0 = time.perf_counter()
            acc = transfer(idx, seed)
            figs = {"accuracy": acc, "keep": keep, "pretrain_images": 0 if idx is None else int(len(idx)),
                    "kept_classes": kept[0] if kept else None}
            runs.append({"label": label, "seed": seed, "figures": figs, "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {label}: target acc {acc:.4f} classes {figs['kept_classes']}", flush=True)
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        summary[label] = {"accuracy": spread(r["figures"]["accuracy"] for r in runs if r["label"] == label)}
        print(f"{label}: {fmt(summary[label]['accuracy'])}")
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {
        "widths": widths, "source": SOURCE, "target": TARGET}
    write_results("apps_transfer", {"task": "fashion-mnist transfer", "model": f"SmallCNN{widths}",
                                    "settings": settings, "runs": runs, "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
