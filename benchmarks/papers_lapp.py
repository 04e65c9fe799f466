"""LAPP ("LAPP: Layer Adaptive Progressive Pruning for Compressing CNNs from Scratch") on Fashion-MNIST: a SmallCNN
pruned while it trains from initialization, against fixed pruning rates at the same MACs and the same epochs.

Per seed, every arm trains --epochs + --ft-epochs epochs on --train-size images (SGD, the seed's data order):

  lapp          prunekit.train.lapp: thresholds, soft masks, 1×1 bypasses and the MACs constraint during the first
                --epochs (target --macs-kept), then the narrowed network (finalize_) trains --ft-epochs more;
  uniform       a fresh network with every width scaled by one factor to LAPP's final MACs, all epochs;
  dense→prune   the dense network trained --epochs, its channels removed by |γ| (Network Slimming's ranking,
                global) to LAPP's final MACs, then --ft-epochs of fine-tuning;
  dense         the unpruned network, all epochs (reference).

Test accuracy on --test-size test images. The claim (LAPP beats fixed per-layer rates — the uniform narrow network
and train-then-prune — at equal MACs and epochs) is held against a baseline when the paired difference over seeds
is above twice its standard error.

    nice -n 10 python benchmarks/papers_lapp.py --seeds 0 1 2 --threads 1

Writes one JSON line per arm and seed to --out (default benchmarks/results/papers_lapp.jsonl); --table prints the
table; --db FILE stores the rows and the verdict in the results store (``--table --db FILE`` without running).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from _apps_common import append_rows, budget_of, store_papers_or_exit

from prunekit.bench.papers import Measured, PaperResult, compare
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.metrics.macs import count_macs
from prunekit.models import SmallCNN
from prunekit.structured import prune_ as structured_prune_
from prunekit.train import fit
from prunekit.train.lapp import LAPP, LAPPConfig

MODEL = "SmallCNN on Fashion-MNIST, trained from initialization"
ARMS = ("dense", "lapp", "uniform", "dense→prune")
SHAPES = {arm: {"seed", "acc", "macs"} for arm in ARMS}
PAPER = "LAPP: Layer Adaptive Progressive Pruning for Compressing CNNs from Scratch"
CLAIM = ("learning each layer's pruning rate while training from scratch (thresholds, bypasses, a FLOPs constraint) "
         "beats fixed rates — a uniformly narrowed network and train-then-prune — at equal MACs and epochs")


def cnn(widths, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(tuple(widths))


def widths_at(macs: float, widths, x0) -> list[int]:
    """Widths scaled by the one factor whose SmallCNN's MACs are nearest ``macs`` (bisection)."""
    lo, hi = 0.01, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if count_macs(SmallCNN(tuple(max(1, round(w * mid)) for w in widths)), x0) < macs:
            lo = mid
        else:
            hi = mid
    cands = [[max(1, round(w * f)) for w in widths] for f in (lo, hi)]
    return min(cands, key=lambda w: abs(count_macs(SmallCNN(tuple(w)), x0) - macs))


def run_seed(args, seed: int, train, test) -> list[dict]:
    x0 = train.tensors[0][:2]
    rows = []
    steps = round(args.epochs * (len(train) // 128))

    def row(arm, model, t0, c0, extra=None):
        r = {"arm": arm, "seed": seed, "acc": accuracy(model, test), "macs": count_macs(model, x0[:1]),
             "params": sum(p.numel() for p in model.parameters()), "seconds": time.perf_counter() - t0,
             "cpu_seconds": time.process_time() - c0, **(extra or {})}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        rows.append(r)

    total = args.epochs + args.ft_epochs
    t0, c0 = time.perf_counter(), time.process_time()
    m = cnn(args.widths, seed)
    fit(m, train, epochs=total, lr=args.lr, seed=seed, progress=False)
    row("dense", m, t0, c0)
    dense_macs = rows[0]["macs"]

    t0, c0 = time.perf_counter(), time.process_time()
    m = cnn(args.widths, seed)
    lapp = LAPP(m, x0, LAPPConfig(macs_kept=args.macs_kept, lam=args.lam, ramp=args.ramp))
    fit(m, train, epochs=args.epochs, lr=args.lr, seed=seed, progress=False,
        batch_loss=lapp.batch_loss(F.cross_entropy), on_step=lapp.on_step(steps))
    rep = lapp.finalize_()
    acc_at_cut = accuracy(m, test)
    fit(m, train, epochs=args.ft_epochs, lr=args.lr / 5, seed=seed + 100, progress=False)
    row("lapp", m, t0, c0, {"channels": rep.channels_after, "thresholds": rep.thresholds, "acc_at_cut": acc_at_cut})
    target = rows[-1]["macs"]

    t0, c0 = time.perf_counter(), time.process_time()
    w = widths_at(target, args.widths, x0[:1])
    m = cnn(w, seed)
    fit(m, train, epochs=total, lr=args.lr, seed=seed, progress=False)
    row("uniform", m, t0, c0, {"widths": w})

    t0, c0 = time.perf_counter(), time.process_time()
    m = cnn(args.widths, seed)
    fit(m, train, epochs=args.epochs, lr=args.lr, seed=seed, progress=False)
    structured_prune_(m, x0, 1 - target / dense_macs, "bn_scale", allocation="global", target="macs", ignore=[m.fc])
    fit(m, train, epochs=args.ft_epochs, lr=args.lr / 5, seed=seed + 100, progress=False)
    row("dense→prune", m, t0, c0, {"channels": [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]})
    return rows


def paper_results(rows: list[dict]) -> list[PaperResult]:
    meas = [Measured(r["arm"], "", r["seed"], {"acc": r["acc"], "macs": r["macs"]}) for r in rows]
    verdict, why = compare(meas, "acc", "lapp", ["uniform", "dense→prune"])
    return [PaperResult(PAPER, CLAIM, verdict, why, ("acc", "macs"), meas, budget_of(rows), percent=("acc",))]


def table(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    out = [f"Seeds {seeds}: test accuracy (%, mean ± sd; per seed), MACs, training CPU s\n",
           "| arm | accuracy | per seed | MACs | parameters | CPU s |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        sel = [r for r in rows if r["arm"] == arm]
        if not sel:
            continue
        acc = [100 * r["acc"] for r in sel]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        out.append(f"| {arm} | {statistics.fmean(acc):.2f} ± {sd:.2f} | {' / '.join(f'{a:.2f}' for a in acc)} | "
                   f"{statistics.fmean(r['macs'] for r in sel) / 1e6:.2f} M | "
                   f"{statistics.fmean(r['params'] for r in sel):,.0f} | {statistics.fmean(r['cpu_seconds'] for r in sel):.0f} |")
    res = paper_results(rows)[0]
    out.append(f"\n**LAPP** — {res.verdict}: {res.why}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--widths", type=int, nargs=3, default=[32, 64, 128])
    p.add_argument("--epochs", type=float, default=3, help="LAPP's pruning epochs (the dense arm's first phase)")
    p.add_argument("--ft-epochs", type=float, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--macs-kept", type=float, default=0.4)
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_lapp.jsonl"))
    p.add_argument("--table", action="store_true")
    p.add_argument("--db", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        train = load_fashion_mnist("train", limit=args.train_size)
        test = load_fashion_mnist("test", limit=args.test_size)
        for seed in args.seeds:
            append_rows(args.out, run_seed(args, seed, train, test), vars(args), ("out", "table", "db", "threads", "seeds"))
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table(rows))
    store_papers_or_exit(args.db, "papers_lapp", MODEL, [args.out], SHAPES, "arm", paper_results)


if __name__ == "__main__":
    main()
