"""The demo: train a small CNN on real data, prune it with several methods, and measure what each bought."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from ..metrics.summary import summary
from ..datasets import fashion_mnist_available, load_digits, load_fashion_mnist
from ..methods import prune_
from ..metrics import accuracy
from ..models import MLP, SmallCNN
from ..train import fit

DEFAULT_RUNS = (
    ("magnitude", "uniform"), ("magnitude", "global"), ("magnitude", "lamp"),
    ("random", "uniform"), ("snip", "global"), ("synflow", "global"),
)


@dataclass
class DemoConfig:
    """Settings of the demo run."""

    data: str = "auto"
    train_size: int = 20000
    epochs: float = 1.0
    sparsities: tuple[float, ...] = (0.5, 0.9)
    runs: tuple[tuple[str, str], ...] = DEFAULT_RUNS
    finetune_steps: int = 100
    seed: int = 0
    progress: bool = True


def _data(cfg: DemoConfig, say: Callable[[str], None]):
    name = cfg.data
    if name == "auto":
        name = "fashion-mnist" if fashion_mnist_available() else "digits"
        if name == "digits":
            say("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); using scikit-learn's digits")
    if name == "fashion-mnist":
        train = load_fashion_mnist("train")
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(train), generator=gen)[: cfg.train_size]
        train = Subset(train, idx.tolist())
        return name, train, load_fashion_mnist("test"), lambda: SmallCNN(widths=(16, 32, 64)), (1, 28, 28)
    if name == "digits":
        return name, load_digits("train"), load_digits("test"), MLP, (64,)
    raise ValueError(f"unknown demo data {name!r}; known: auto, fashion-mnist, digits")


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, prune with each (method, allocation) at each sparsity, fine-tune briefly, and measure."""
    torch.manual_seed(cfg.seed)
    name, train, test, build, shape = _data(cfg, say)
    model = build()
    t0 = time.perf_counter()
    say(f"training {type(model).__name__} on {len(train):,} {name} examples for {cfg.epochs} epoch(s)…")
    fit(model, train, epochs=cfg.epochs, lr=0.1, batch_size=64, seed=cfg.seed, progress=cfg.progress)
    train_s = time.perf_counter() - t0
    example = torch.zeros(1, *shape)
    dense = summary(model, example_inputs=example)
    dense_acc = accuracy(model, test)
    say(f"dense: test accuracy {dense_acc:.4f}, {dense.params:,} parameters ({train_s:.1f} s of training)")
    calib = list(DataLoader(train, batch_size=128, shuffle=False))[:4]
    rows = []
    for sparsity in cfg.sparsities:
        for method, allocation in cfg.runs:
            pruned = copy.deepcopy(model)
            report = prune_(pruned, method, sparsity, allocation=allocation, data=calib,
                            loss_fn=F.cross_entropy, example_inputs=example,
                            iterations=20 if method == "synflow" else 1, seed=cfg.seed, progress=False)
            acc_pruned = accuracy(pruned, test)
            fit(pruned, train, epochs=cfg.finetune_steps / (len(train) // 64), lr=0.01, batch_size=64,
                seed=cfg.seed + 1, progress=False)
            acc_tuned = accuracy(pruned, test)
            s = summary(pruned, example_inputs=example)
            rows.append({
                "method": method, "allocation": allocation, "sparsity": round(report.sparsity, 4),
                "accuracy_pruned": acc_pruned, "accuracy_finetuned": acc_tuned, "nonzeros": s.nonzeros,
                "effective_macs": s.effective_macs, "sparse_bytes": s.sparse_bytes, "prune_seconds": report.seconds,
            })
            say(f"  {method:<9} {allocation:<7} {sparsity:.0%}: accuracy {acc_pruned:.4f} → {acc_tuned:.4f} "
                f"after {cfg.finetune_steps} fine-tune steps")
    return {
        "data": name, "model": type(model).__name__, "train_examples": len(train), "test_examples": len(test),
        "dense": {"accuracy": dense_acc, "params": dense.params, "macs": dense.macs, "bytes": dense.dense_bytes},
        "finetune_steps": cfg.finetune_steps, "runs": rows, "seconds": time.perf_counter() - t0,
    }


def format_demo(result: dict[str, Any]) -> str:
    """The demo's result as a table a person reads."""
    d = result["dense"]
    head = (f"{'method':<10} {'allocation':<11} {'sparsity':>8} {'acc. pruned':>11} {'acc. tuned':>10} "
            f"{'non-zeros':>10} {'eff. MACs':>10} {'stored':>9}")
    lines = [
        f"prunekit demo: {result['model']} on {result['data']} ({result['train_examples']:,} training, "
        f"{result['test_examples']:,} test examples)",
        f"dense: accuracy {d['accuracy']:.4f}, {d['params']:,} parameters, {d['macs'] / 1e6:.2f} M MACs, "
        f"{d['bytes'] / 1e3:.1f} kB",
        f"each row: pruned copy, accuracy right after pruning and after {result['finetune_steps']} fine-tune steps",
        head, "-" * len(head),
    ]
    for r in result["runs"]:
        lines.append(
            f"{r['method']:<10} {r['allocation']:<11} {r['sparsity']:>8.2%} {r['accuracy_pruned']:>11.4f} "
            f"{r['accuracy_finetuned']:>10.4f} {r['nonzeros']:>10,} {r['effective_macs'] / 1e6:>9.2f}M "
            f"{r['sparse_bytes'] / 1e3:>7.1f}kB"
        )
    lines.append(f"total time {result['seconds']:.1f} s")
    return "\n".join(lines)
