"""The three-regime model of network pruning on Fashion-MNIST: a temperature × load grid, each point trained,
pruned (magnitude, uniform per layer, fixed sparsity) and retrained twice, the loss landscape between the two
retrained solutions measured, every point put in a regime, and the paper's prediction tested on held-out seeds.

Temperature-like (--temperature): ``lr`` (default), the dense SmallCNN's constant learning rate (one run of
--dense-epochs per rate in --lrs, batch 64; a larger rate leaves more SGD noise: hotter), or ``epochs``, the epochs
one constant-rate run trained before it was stopped (snapshots at --epochs; fewer = hotter: the paper's
early-stopping axis). Load-like: the density of the pruned model (the paper's axis). Each dense model is pruned to
every --sparsities (the two inner convolutions; the stem and head stay dense, prunekit's default scope) and
retrained from its masks for --retrain-epochs with two data orders. Recorded per point: the retrained accuracy
(mean of the two), the linear-path loss barrier between the two retrained solutions (BatchNorm re-estimated at
every point of the path), the CKA of their logits, and the dense model's sharpness (loss rise under 5 % random
weight perturbations).

Test of the paper's prediction: for each load and each step up in temperature, the regime at the lower
temperature predicts the sign of the accuracy change (regime I: raising the temperature helps; regime II: it
hurts). The barrier threshold that splits regime I from II is fitted on the first seed's grid and the predictions
are scored on the other seeds' grids (held out), beside a baseline that always predicts the first seed's most
common sign. Held when the regime rule beats that baseline on the held-out points, significantly: on the steps where
the two predictions differ, an exact one-sided sign test (prunekit.analysis.regimes.against_fixed_guess) at
p < 0.05; not tested when every held-out point falls in one regime (the rule is then a fixed guess).

    nice -n 10 python benchmarks/papers_regimes.py --seeds 0 1 2 --threads 1

The README's run (one process per seed S): --seeds S --temperature lr --lrs 0.005 0.02 0.08 0.32 --dense-epochs 4
--widths 8 16 32 --sparsities 0.5 0.8 0.95 0.98 --retrain-epochs 2 --retrain-lr 0.1; the epochs grid
(results/papers_regimes_epochs.jsonl): --temperature epochs --widths 8 16 32. The hot-retraining grid
(results/papers_regimes_hot.jsonl, seeds 0–4): --temperature lr --lrs 0.005 0.02 0.08 0.32 --dense-epochs 8
--train-size 4000 --widths 8 16 32 --sparsities 0.9 0.98 0.99 0.995 --retrain-epochs 4 --retrain-lr 0.4.

Writes one JSON line per grid point to --out (default benchmarks/results/papers_regimes.jsonl); --table prints the
grid and the verdict from --out. With --db FILE the rows of --out (and --merge) also go into the results store,
one tested claim per temperature axis, beside its verdict (``prunekit report`` shows them in its papers group);
``--table --db FILE`` stores them without running.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from _apps_common import append_rows, budget_of, store_papers_or_exit

import prunekit as pk
from prunekit.analysis.regimes import (RegimeConfig, Transition, against_fixed_guess, classify, fit_barrier_threshold,
                                       linear_cka, linear_path, prediction_accuracy, sharpness)
from prunekit.bench.papers import Measured, PaperResult
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.models import SmallCNN
from prunekit.train import fit


def eval_loss(data) -> callable:
    x, y = data.tensors

    def evaluate(model) -> float:
        return float(F.cross_entropy(model(x), y))

    return evaluate


def logits(model, data):
    model.eval()
    with torch.no_grad():
        return model(data.tensors[0])


def dense_run(train, seed: int, widths, lr: float, epochs: list[int]) -> dict[int, torch.nn.Module]:
    """One dense run at the constant learning rate ``lr`` (batch 64, momentum 0.9); a copy after each of
    ``epochs`` (whole epochs)."""
    torch.manual_seed(seed)
    model = SmallCNN(tuple(widths))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=64, shuffle=True, drop_last=True, generator=gen)
    snaps = {}
    for epoch in range(1, max(epochs) + 1):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch in epochs:
            snaps[epoch] = copy.deepcopy(model).eval()
    return snaps


def dense_snapshots(train, args, seed: int) -> dict[float, torch.nn.Module]:
    """The dense model at every temperature, keyed by the temperature's value: --epochs snapshots of one run
    (``--temperature epochs``; fewer epochs = hotter), or one run of --dense-epochs per learning rate in --lrs
    (``--temperature lr``; a larger constant rate = hotter)."""
    if args.temperature == "epochs":
        return {float(e): m for e, m in dense_run(train, seed, args.widths, args.lr, args.epochs).items()}
    return {lr: dense_run(train, seed, args.widths, lr, [args.dense_epochs])[args.dense_epochs] for lr in args.lrs}


def hotter_first(temperature: str, values: list[float]) -> list[float]:
    """Temperature values from the coldest to the hottest."""
    return sorted(values, reverse=temperature == "epochs")


def grid_point(dense, train, test, bn_batches, args, seed: int, epochs: float, sparsity: float) -> dict:
    t0 = time.perf_counter()
    pruned = copy.deepcopy(dense)
    pk.prune_(pruned, "magnitude", sparsity, allocation="uniform", progress=False)
    acc_pruned = accuracy(pruned, test)
    ends = []
    for k in range(2):  # two retrainings from the same masks, different data orders (the paper's seed pairs)
        m = copy.deepcopy(pruned)
        fit(m, train, epochs=args.retrain_epochs, lr=args.retrain_lr, batch_size=64, seed=100 * seed + k + 1,
            progress=False)
        ends.append(m)
    accs = [accuracy(m, test) for m in ends]
    path = linear_path(ends[0], ends[1], eval_loss(test), points=args.points, bn_data=bn_batches)
    try:
        cka = linear_cka(logits(ends[0], test), logits(ends[1], test))
    except ValueError:  # a retraining collapsed (one output for every example): no similarity to measure
        cka = None
    return dict(seed=seed, t_value=epochs, sparsity=sparsity, density=1 - sparsity, acc_pruned=acc_pruned,
                acc=statistics.fmean(accs), accs=accs, barrier=path.barrier, mc=path.mode_connectivity,
                path_losses=path.losses, cka=cka, seconds=time.perf_counter() - t0)


def run_seed(args, seed: int) -> list[dict]:
    train = load_fashion_mnist("train", limit=args.train_size)
    test = load_fashion_mnist("test", limit=args.test_size)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)[: 128 * args.bn_batches]
    bn_batches = [train.tensors[0][perm[i:i + 128]] for i in range(0, len(perm), 128)]
    t0 = time.perf_counter()
    snaps = dense_snapshots(train, args, seed)
    rows = []
    for temp, dense in snaps.items():
        sharp = sharpness(dense, eval_loss(test), radius=0.05, samples=3, seed=seed)
        rows.append(dict(kind="dense", seed=seed, temperature=args.temperature, t_value=temp, acc=accuracy(dense, test),
                         sharpness=sharp, seconds=time.perf_counter() - t0))
        for sparsity in args.sparsities:
            row = dict(kind="point", temperature=args.temperature,
                       **grid_point(dense, train, test, bn_batches, args, seed, temp, sparsity))
            rows.append(row)
            print(f"seed {seed} {args.temperature} {temp} sparsity {sparsity}: acc {row['acc']:.3f} "
                  f"barrier {row['barrier']:.3f} cka {cka_of(row):.3f} ({row['seconds']:.0f} s)", flush=True)
    return rows


def pct(density: float) -> str:
    """A density as a percentage, with as many decimals as it needs (0.5 %, not a second "1 %")."""
    return f"{100 * density:.4g} %"


def cka_of(row: dict) -> float:
    """A point's CKA; NaN where a retraining collapsed (its rows say ``cka: null``). The regime's direction does not
    depend on it (I by the barrier; II-A and II-B both say lower the temperature)."""
    return float("nan") if row["cka"] is None else row["cka"]


def tv(row: dict) -> float:
    """A row's temperature value (``epochs`` in the files of the first run, which had only that axis)."""
    return row["t_value"] if "t_value" in row else row["epochs"]


def transitions(points: list[dict]) -> list[Transition]:
    """Each step up in temperature (to the next fewer-epochs snapshot) at each load, per seed."""
    out = []
    for seed in sorted({p["seed"] for p in points}):
        for s in sorted({p["sparsity"] for p in points}):
            row = [p for p in points if p["seed"] == seed and p["sparsity"] == s]
            order = hotter_first(points[0].get("temperature", "epochs"), [tv(p) for p in row])
            row = sorted(row, key=lambda p: order.index(tv(p)))
            for cold, hot in zip(row, row[1:]):  # each step raises the temperature
                out.append(Transition(1 - s, tv(cold), tv(hot), cold["barrier"], cka_of(cold),
                                      hot["acc"] - cold["acc"]))
    return out


def held_out_test(points: list[dict], cfg: RegimeConfig) -> tuple[str, list[str]]:
    """The verdict on held-out seeds (held / not held / not tested) and the sentences behind it."""
    seeds = sorted({p["seed"] for p in points})
    fit_on = [p for p in points if p["seed"] == seeds[0]]
    held = [p for p in points if p["seed"] != seeds[0]]
    out = []
    fitted = fit_barrier_threshold(transitions(fit_on), cfg)
    tr_fit, tr_held = transitions(fit_on), transitions(held)
    acc_fit, n_fit = prediction_accuracy(tr_fit, fitted)
    out.append(f"Barrier threshold fitted on seed {seeds[0]}: {fitted.barrier_threshold:.4f} "
               f"({acc_fit:.0%} of its {n_fit} temperature steps predicted).")
    if not tr_held:
        return "not tested", out + ["One seed: no held-out points to test the prediction on."]
    acc, n = prediction_accuracy(tr_held, fitted)
    ups = sum(1 for t in tr_fit if t.gain > 0)
    majority = 1 if ups > len(tr_fit) - ups else -1
    base = sum(1 for t in tr_held if majority * t.gain > 0) / len(tr_held)
    a_priori, _ = prediction_accuracy(tr_held, cfg)
    regimes = {classify(t.barrier, t.cka, fitted) for t in tr_held}
    if len(regimes) == 1:
        claim, why = "not tested", f": every held-out point is in regime {regimes.pop()}, so the rule is one fixed guess"
    else:
        rule, guess, p = against_fixed_guess(tr_held, fitted, majority)
        claim = "held" if acc > base and p < 0.05 else "not held"
        tail = "" if p < 0.05 else ", within noise" if rule >= guess else ", the guess did better"
        why = (f" (on the {rule + guess} steps where they disagree the rule is right {rule} times, the fixed guess "
               f"{guess}: exact sign test p = {p:.2g}{tail})")
    out.append(f"Held-out seeds {seeds[1:]}: the regime rule predicts {acc:.0%} of {n} steps "
               f"(a priori threshold {cfg.barrier_threshold}: {a_priori:.0%}); always '{'+' if majority > 0 else '−'}' "
               f"(seed {seeds[0]}'s majority): {base:.0%} — claim **{claim}**{why}.")
    return claim, out


def verdict(points: list[dict], cfg: RegimeConfig) -> list[str]:
    return held_out_test(points, cfg)[1]


# The results store: the shape of every row this script writes (by "kind"), and the claim it tests.
MODEL = "SmallCNN on Fashion-MNIST"
SHAPES = {"dense": {"seed", "acc"}, "point": {"seed", "sparsity", "acc", "barrier", "cka"}}
PAPER = "A Three-regime Model of Network Pruning"
CLAIM = ("the regime a pruned model's retrained solutions sit in (a loss barrier between them: regime I; none: "
         "regime II) predicts whether raising the temperature-like hyperparameter raises its accuracy (I) or "
         "lowers it (II); tested on held-out seeds against always predicting the first seed's majority direction")


def paper_results(rows: list[dict]) -> list[PaperResult]:
    """One tested claim per temperature axis in ``rows`` (the learning-rate grid, the dense-epochs grid)."""
    out = []
    for axis in dict.fromkeys(r.get("temperature", "epochs") for r in rows):
        mine = [r for r in rows if r.get("temperature", "epochs") == axis]
        name = "dense lr" if axis == "lr" else "dense epochs"
        measured = [Measured(f"{name} {tv(r)}", "dense" if r["kind"] == "dense" else f"density {pct(1 - r['sparsity'])}",
                             r["seed"], {"acc": r["acc"]} if r["kind"] == "dense" else
                             {"acc": r["acc"], "barrier": r["barrier"], "cka": r["cka"]}) for r in mine]
        cfg = mine[0].get("config", {})
        regime_cfg = RegimeConfig(points=cfg.get("points", 7), barrier_threshold=cfg.get("barrier_threshold", 0.05),
                                  cka_threshold=cfg.get("cka_threshold", 0.9))
        claim, why = held_out_test([r for r in mine if r["kind"] == "point"], regime_cfg)
        out.append(PaperResult(PAPER, CLAIM, claim, " ".join(why).replace("**", ""), ("acc", "barrier"), measured,
                               budget_of(mine), test=f"temperature: {name}", percent=("acc",)))
    return out


def table(rows: list[dict], cfg: RegimeConfig) -> str:
    points = [r for r in rows if r["kind"] == "point"]
    dense = [r for r in rows if r["kind"] == "dense"]
    seeds = sorted({p["seed"] for p in points})
    kind = points[0].get("temperature", "epochs")
    epochs = hotter_first(kind, list({tv(p) for p in points}))
    sps = sorted({p["sparsity"] for p in points})
    fitted = fit_barrier_threshold(transitions([p for p in points if p["seed"] == seeds[0]]), cfg)

    def cell(e, s):
        sel = [p for p in points if tv(p) == e and p["sparsity"] == s]
        acc = statistics.fmean(p["acc"] for p in sel)
        sd = statistics.stdev(p["acc"] for p in sel) if len(sel) > 1 else 0.0
        bar = statistics.fmean(p["barrier"] for p in sel)
        measured = [p["cka"] for p in sel if p["cka"] is not None]  # a collapsed retraining has none
        cka = statistics.fmean(measured) if measured else float("nan")
        return f"{100 * acc:.1f} ± {100 * sd:.1f} / {bar:.4f} / {cka:.3f} / {classify(bar, cka, fitted)}"

    out = [f"Seeds {seeds}. Each cell: retrained accuracy (%, mean ± sd over seeds) / barrier / CKA / regime "
           f"(threshold {fitted.barrier_threshold:.4f} fitted on seed {seeds[0]}, CKA ≥ {cfg.cka_threshold} for II-B).\n",
           f"| dense {'epochs' if kind == 'epochs' else 'learning rate'} (temperature ↑ down) | dense acc. | sharpness | " + " | ".join(f"density {pct(1 - s)}" for s in sps)
           + " |", "|---|---|---|" + "---|" * len(sps)]
    for e in epochs:
        d = [r for r in dense if tv(r) == e]
        out.append(f"| {e} | {100 * statistics.fmean(r['acc'] for r in d):.1f} | "
                   f"{statistics.fmean(r['sharpness'] for r in d):.3f} | " + " | ".join(cell(e, s) for s in sps) + " |")
    ts = transitions(points)
    out.append("\nMean accuracy change when the temperature is raised one step, by density: "
               + "; ".join(f"{pct(1 - s)}: {100 * statistics.fmean(t.gain for t in ts if abs(t.load - (1 - s)) < 1e-9):+.2f} pt"
                           for s in sps))
    out += verdict(points, cfg)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64])
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--temperature", choices=["epochs", "lr"], default="lr")
    p.add_argument("--lr", type=float, default=0.05, help="--temperature epochs: the dense run's constant rate")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8], help="--temperature epochs: snapshots")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="--temperature lr")
    p.add_argument("--dense-epochs", type=int, default=4, help="--temperature lr: each dense run's length")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95], help="loads")
    p.add_argument("--retrain-epochs", type=float, default=1.0)
    p.add_argument("--retrain-lr", type=float, default=0.02)
    p.add_argument("--points", type=int, default=7, help="points on the linear path")
    p.add_argument("--bn-batches", type=int, default=2, help="batches of 128 that re-estimate BatchNorm on the path")
    p.add_argument("--barrier-threshold", type=float, default=0.05, help="the a priori threshold, reported beside")
    p.add_argument("--cka-threshold", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_regimes.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="more result files to tabulate with --out")
    p.add_argument("--db", default=None, help="also store the rows of --out (and --merge), with the claim's verdict, "
                                              "in this results store")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RegimeConfig(points=args.points, barrier_threshold=args.barrier_threshold, cka_threshold=args.cka_threshold)
    if not args.table:
        for seed in args.seeds:
            rows = run_seed(args, seed)
            append_rows(args.out, rows, vars(args), ("out", "table", "merge"))
    rows = [json.loads(line) for path in [args.out, *args.merge] for line in path.read_text().splitlines() if line.strip()]
    for axis in dict.fromkeys(r.get("temperature", "epochs") for r in rows):  # one grid per temperature axis
        print(table([r for r in rows if r.get("temperature", "epochs") == axis], cfg))
    store_papers_or_exit(args.db, "papers_regimes", MODEL, [args.out, *args.merge], SHAPES, "kind", paper_results)


if __name__ == "__main__":
    main()
