"""prunekit.structured vs Torch-Pruning (DepGraph) on a ResNet-style CNN trained on Fashion-MNIST.

Trains prunekit.models.ResNetStyle, prunes ``--ratio`` of the channels of every group with
prunekit's structured stage (``what: channels``, group L2, fc ignored, through ``pipeline.run_stages``) and with Torch-Pruning's MetaPruner (GroupMagnitudeImportance p=2,
same ratio, fc ignored), fine-tunes both with the same schedule and reports accuracy, parameters,
MACs, CPU latency at batch 1 and ``--large-batch`` (plain eager; BatchNorm folded into the
convolutions + channels-last layout; and ``prunekit.structured.for_inference``: folded, frozen,
oneDNN-fused TorchScript) and the pruning call's time. Latencies are interleaved across models in rounds (median of rounds) so that drifting load
on a shared machine hits every model alike.

    python benchmarks/structured_vs_torch_pruning.py --train-limit 10000 --epochs 1 --finetune-epochs 1

Needs ``pip install torch-pruning==1.6.1`` and Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from torch import nn

import prunekit.structured as ps
from prunekit.metrics.summary import summary
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.infra.latency import latency
from prunekit.models import ResNetStyle
from prunekit.pipeline import Workspace, parse_stage, run_stages
from prunekit.train.loop import fit


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N examples (default: all 60k)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test examples")
    p.add_argument("--epochs", type=float, default=2.0, help="training epochs of the dense model")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    p.add_argument("--large-batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds (median reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args()


def prune_with_prunekit(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, float]:
    """prunekit's side runs the pipeline's structured stage (what: channels), the one ``prunekit run`` runs."""
    stage = parse_stage({"stage": "structured", "what": "channels", "sparsity": ratio, "importance": "l2",
                         "ignore": ["fc"]})
    start = time.perf_counter()
    run_stages([stage], Workspace(model=model, example_inputs=x, progress=False))
    return model, time.perf_counter() - start


def prune_with_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[nn.Module, float]:
    import torch_pruning as tp

    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[model.fc])
    pruner.step()
    return model, time.perf_counter() - start


def inference_ready(model: nn.Module) -> nn.Module:
    """A copy prepared for CPU inference: BN folded into convs (channels-last is applied when timing)."""
    return ps.fold_bn_(copy.deepcopy(model).eval())


def interleaved_latency(models: dict[str, tuple[nn.Module, bool]], x: torch.Tensor, rounds: int,
                        threads: int) -> dict[str, float]:
    runs = 1 if x.shape[0] > 1 else 25  # batch 1 is fast: take the median of 25 runs in each round
    for model, cl in models.values():
        latency(model, x, runs=1, warmup=2, threads=threads, channels_last=cl)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, (model, cl) in models.items():
            times[name].append(latency(model, x, runs=runs, warmup=0, threads=threads, channels_last=cl).median_ms)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = load_fashion_mnist("train", limit=args.train_limit)
    test = load_fashion_mnist("test", limit=args.test_limit)
    x1 = torch.randn(1, 1, 28, 28)
    xb = torch.randn(args.large_batch, 1, 28, 28)

    base = ResNetStyle()
    t0 = time.perf_counter()
    fit(base, train, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=not args.quiet)
    train_s = time.perf_counter() - t0
    rows: dict[str, dict] = {"dense": {"acc_pruned": None, "acc": accuracy(base, test), "prune_s": None}}

    for name, fn in (("prunekit", prune_with_prunekit), ("torch-pruning", prune_with_torch_pruning)):
        model, seconds = fn(copy.deepcopy(base).eval(), x1, args.ratio)
        acc0 = accuracy(model, test)
        fit(model, train, epochs=args.finetune_epochs, lr=args.finetune_lr, seed=args.seed, progress=not args.quiet)
        rows[name] = {"model": model, "acc_pruned": acc0, "acc": accuracy(model, test), "prune_s": seconds}
    rows["dense"]["model"] = base.eval()

    for name, row in rows.items():
        s = summary(row["model"], x1)
        row["params"], row["macs"] = s.params, s.macs
    timing_models = {}
    for name, row in rows.items():
        timing_models[f"{name}|eager"] = (row["model"], False)
        timing_models[f"{name}|folded+cl"] = (inference_ready(row["model"]), True)
        timing_models[f"{name}|fused"] = (ps.for_inference(row["model"], x1), False)
    for batch, x in (("b1", x1), (f"b{args.large_batch}", xb)):
        lat = interleaved_latency(timing_models, x, args.rounds, args.threads)
        for key, ms in lat.items():
            name, mode = key.split("|")
            rows[name][f"{batch} {mode} ms"] = ms

    big = f"b{args.large_batch}"
    print(f"\nResNetStyle on Fashion-MNIST: train {len(train)} examples × {args.epochs} epochs ({train_s:.0f} s), "
          f"prune ratio {args.ratio}, fine-tune {args.finetune_epochs} epoch(s) at lr {args.finetune_lr}; "
          f"test on {len(test)}; {args.threads} thread(s); latency = median of {args.rounds} interleaved rounds\n")
    head = ("| | acc. after prune | acc. after fine-tune | params | MACs | MACs × | b1 ms eager / folded+cl / fused | "
            f"{big} ms eager / folded+cl / fused | {big} speed-up eager / folded+cl / fused (% of MACs ×) | "
            "prune call s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    dense = rows["dense"]
    results = {}
    for name, row in rows.items():
        macs_x = dense["macs"] / row["macs"]
        modes = ("eager", "folded+cl", "fused")
        sp = [dense[f"{big} {m} ms"] / row[f"{big} {m} ms"] for m in modes]
        acc0 = "-" if row["acc_pruned"] is None else f"{row['acc_pruned']:.2%}"
        ptime = "-" if row["prune_s"] is None else f"{row['prune_s']:.3f}"
        b1 = " / ".join(f"{row[f'b1 {m} ms']:.2f}" for m in modes)
        bb = " / ".join(f"{row[f'{big} {m} ms']:.1f}" for m in modes)
        speed = " / ".join(f"{x:.2f}× ({x / macs_x:.0%})" for x in sp)
        print(f"| {name} | {acc0} | {row['acc']:.2%} | {row['params'] / 1e6:.3f} M | {row['macs'] / 1e6:.1f} M | "
              f"{macs_x:.2f} | {b1} | {bb} | {speed} | {ptime} |")
        results[name] = {k: v for k, v in row.items() if k != "model"}
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
