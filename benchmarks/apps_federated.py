"""Federated pruning (FedTiny-style) on Fashion-MNIST: accuracy vs communication bytes.

Clients hold Dirichlet(α) non-IID splits of a Fashion-MNIST training subset; FedAvg runs ``--rounds``
rounds of ``--local-epochs`` local SGD each. Compared: dense FedAvg (dense payloads), and FedAvg with
server-side progressive global-magnitude pruning to each ``--sparsity`` (sparse payloads: bitmask plus
kept values). The claim tested ("Distributed Pruning Towards Tiny Neural Networks in Federated Learning"):
a tiny (very sparse) model trained federatedly keeps accuracy close to dense while moving far fewer bytes.

``--select A B …`` adds, at each sparsity, the same run with FedTiny's adaptive batch-norm selection among those
allocations (the clients judge each candidate mask with batch-norm statistics recomputed on their own data; the
winner allocates every pruning round), its bytes counted; the second claim: choosing the allocation on the clients'
data beats the fixed global allocation at the same sparsity.

``--adjust F`` adds FedTiny's progressive pruning (from the first round at the final sparsity, one layer a round,
output side first, moves up to F of its kept weights — cosine-decayed — to the pruned weights the clients' top-k
gradients favour; the top-k uploads counted), alone and, with ``--select``, together with the selection (both
FedTiny modules); the third claim: progressive pruning beats the server's fixed magnitude mask at equal rounds.

    python benchmarks/apps_federated.py --seeds 0 1 2
    python benchmarks/apps_federated.py --seeds 0 1 2 --sparsity 0.95 --select global uniform erk lamp \
        --json benchmarks/results/apps_federated_select.json
    python benchmarks/apps_federated.py --seeds 0 1 2 3 4 5 6 7 8 9 --rounds 16 --sparsity 0.95 --adjust 0.3 \
        --select global uniform erk lamp --name apps_federated_adjust
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
    p.add_argument("--select", nargs="+", default=None, help="allocations for FedTiny's adaptive BN selection")
    p.add_argument("--adjust", type=float, default=0.0, help="FedTiny's progressive pruning: the share moved per step")
    p.add_argument("--name", default="apps_federated", help="the results' benchmark name (and JSON file)")
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
        arms = [(0.0, None, 0.0)] + [(s, None, 0.0) for s in args.sparsity]
        arms += [(s, tuple(args.select), 0.0) for s in args.sparsity] if args.select else []
        arms += [(s, None, args.adjust) for s in args.sparsity] if args.adjust else []
        arms += [(s, tuple(args.select), args.adjust) for s in args.sparsity] if args.adjust and args.select else []
        for s, select, adjust in arms:
            torch.manual_seed(seed)
            model = model_fn()
            t0 = time.perf_counter()
            rep = federated_prune_(model, model_fn, clients, rounds=args.rounds, sparsity=s, prune_until=0.5,
                                   local_epochs=args.local_epochs, lr=0.05, batch_size=32,
                                   sparse_payload=s > 0, runner=args.runner, select=select, adjust=adjust,
                                   test=test, seed=seed)
            label = "dense FedAvg" if s == 0 else f"pruned {s:.2f}" + {
                (False, False): "", (True, False): " + adaptive BN selection", (False, True): " + progressive pruning",
                (True, True): " + FedTiny (selection + progressive)"}[(bool(select), bool(adjust))]
            figs = {"accuracy": rep.rounds[-1].accuracy, "bytes": rep.total_bytes, "dense_bytes": rep.dense_bytes,
                    "bytes_ratio": rep.total_bytes / rep.dense_bytes, "sparsity": s,
                    "curve": [(r.cumulative_bytes, r.accuracy) for r in rep.rounds]}
            if select:
                figs["allocation"] = rep.allocation
                figs["selection_losses"] = rep.selection["losses"]
                figs["selection_bytes"] = rep.selection["download_bytes"] + rep.selection["upload_bytes"]
            if adjust:
                figs["adjustments"] = rep.adjustments
            runs.append({"label": label, "seed": seed, "figures": figs, "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {label}: acc {figs['accuracy']:.4f}, {rep.total_bytes / 1e6:.2f} MB "
                  f"({figs['bytes_ratio']:.3f} of dense), {runs[-1]['seconds']:.0f}s" +
                  (f", chose {rep.allocation}" if select else ""), flush=True)
    summary = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        summary[label] = {"accuracy": spread(r["figures"]["accuracy"] for r in rs),
                          "MB": spread(r["figures"]["bytes"] / 1e6 for r in rs)}
        print(f"{label}: accuracy {fmt(summary[label]['accuracy'])}, MB {fmt(summary[label]['MB'], 2)}")
    verdicts = []
    extras = [(" + adaptive BN selection", "selection_minus_global")] if args.select else []
    extras += [(" + progressive pruning", "progressive_minus_global")] if args.adjust else []
    extras += [(" + FedTiny (selection + progressive)", "fedtiny_minus_global")] if args.adjust and args.select else []
    for s in args.sparsity:
        fixed = {r["seed"]: r["figures"]["accuracy"] for r in runs if r["label"] == f"pruned {s:.2f}"}
        for suffix, key in extras:
            diffs = [r["figures"]["accuracy"] - fixed[r["seed"]] for r in runs if r["label"] == f"pruned {s:.2f}{suffix}"]
            mean = float(np.mean(diffs))
            se = float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
            verdicts.append({"sparsity": s, "arm": suffix.strip(" +"), "seeds": len(diffs), key: mean,
                             "minus_global": mean, "se": se, "held": bool(len(diffs) > 1 and mean > 2 * se)})
            print(f"sparsity {s:.2f}:{suffix} − global {mean:+.4f} ± {se:.4f} (paired, {len(diffs)} seeds): "
                  f"{'held' if verdicts[-1]['held'] else 'not held'}")
    if verdicts:
        summary["verdicts"] = verdicts
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds", "name")} | {"widths": widths}
    write_results(args.name, {"task": "fashion-mnist federated", "model": f"SmallCNN{widths}",
                                     "settings": settings, "runs": runs, "summary": summary}, db=args.db)
    return summary


if __name__ == "__main__":
    main()
