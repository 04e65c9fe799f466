"""Federated pruning (FedTiny-style) on Fashion-MNIST: accuracy vs communication bytes.

Clients hold Dirichlet(α) non-IID splits of a Fashion-MNIST training subset; FedAvg runs ``--rounds``
rounds of ``--local-epochs`` local SGD each. Compared: dense FedAvg (dense payloads), and FedAvg with
server-side progressive global-magnitude pruning to each ``--sparsity`` (sparse payloads: bitmask plus
kept values). The claim tested ("Distributed Pruning Towards Tiny Neural Networks in Federated Learning"):
a tiny (very sparse) model trained federatedly keeps accuracy close to dense while moving far fewer bytes.

    python benchmarks/apps_federated.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from _apps_common import fmt, spread, write_results
from prunekit.apps.federated import dirichlet_split, federated_prune_
from prunekit.datasets import load_fashion_mnist
from prunekit.models.reference import SmallCNN


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.8, 0.95])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runner", default="serial")
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train = load_fashion_mnist("train", limit=args.train)
    test = load_fashion_mnist("test", limit=args.test)
    x, y = train.tensors
    widths = (8, 16, 32)

    def model_fn():
        return SmallCNN(widths)

    runs = []
    for seed in args.seeds:
        parts = dirichlet_split(y.numpy(), args.clients, args.alpha, seed=seed, min_size=32)
        clients = [TensorDataset(x[i], y[i]) for i in parts]
        for s in [0.0, *args.sparsity]:
            torch.manual_seed(seed)
            model = model_fn()
            t0 = time.perf_counter()
            rep = federated_prune_(model, model_fn, clients, rounds=args.rounds, sparsity=s, prune_until=0.5,
                                   local_epochs=args.local_epochs, lr=0.05, batch_size=32,
                                   sparse_payload=s > 0, runner=args.runner, test=test, seed=seed)
            label = "dense FedAvg" if s == 0 else f"pruned {s:.2f}"
            figs = {"accuracy": rep.rounds[-1].accuracy, "bytes": rep.total_bytes, "dense_bytes": rep.dense_bytes,
                    "bytes_ratio": rep.total_bytes / rep.dense_bytes, "sparsity": s,
                    "curve": [(r.cumulative_bytes, r.accuracy) for r in rep.rounds]}
            runs.append({"label": label, "seed": seed, "figures": figs, "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {label}: acc {figs['accuracy']:.4f}, {rep.total_bytes / 1e6:.2f} MB "
                  f"({figs['bytes_ratio']:.3f} of dense), {runs[-1]['seconds']:.0f}s", flush=True)
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        summary[label] = {"accuracy": spread(r["figures"]["accuracy"] for r in rs),
                          "MB": spread(r["figures"]["bytes"] / 1e6 for r in rs)}
        print(f"{label}: accuracy {fmt(summary[label]['accuracy'])}, MB {fmt(summary[label]['MB'], 2)}")
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"widths": widths}
    write_results("apps_federated", {"task": "fashion-mnist federated", "model": f"SmallCNN{widths}",
                                     "settings": settings, "runs": runs, "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
