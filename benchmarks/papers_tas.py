"""TAS (network pruning via transformable architecture search) on Fashion-MNIST, at equal final MACs and equal
training epochs.

Per seed: the unpruned ChainCNN (--widths, stages of conv-BN-ReLU; depth 2 per stage by default) is trained for
--epochs on --train-size images. TAS searches its widths and depths toward --target of its MACs for
--search-epochs (prunekit.structured.tas.search_widths). Then, each for --kd-epochs of logit distillation from the
unpruned network (T = 4, 0.9 KL + 0.1 CE), at the MACs the search landed on:

  tas        a fresh network of the searched widths/depths (the paper's method);
  uniform    a fresh network of the unpruned widths scaled by one factor to the same MACs (depth kept);
  magnitude  the trained unpruned network with channels removed by L1 norm (global ranking, structured.prune_,
             target="macs") to the same MACs, weights inherited, then the same distillation;
  uniform+   the uniform network distilled for --kd-epochs + --search-epochs (the search's epochs given to it).

Test accuracy on the first --test-size test images. The claim (searching widths/depths, then distilling, beats
both a fixed uniform shape and inherited-weight pruning at equal MACs) is held against a baseline when the paired
difference over seeds is positive by more than twice its standard error.

    nice -n 10 python benchmarks/papers_tas.py --seeds 0 1 2 --threads 1

Writes one JSON line per arm and seed to --out (default benchmarks/results/papers_tas.jsonl); --table prints the
markdown table of --out. With --db FILE the rows of --out also go into the results store, beside the claim and its
verdict (``prunekit report`` shows them in its papers group); ``--table --db FILE`` stores them without running.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

from _apps_common import append_rows, budget_of, store_papers_or_exit

from prunekit.bench.papers import Measured, PaperResult, compare
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.metrics.macs import count_macs
from prunekit.structured import prune_ as structured_prune_
from prunekit.structured.tas import ChainCNN, TASConfig, chain_macs, distill_, search_widths, uniform_widths
from prunekit.train import fit

ARMS = ("tas", "uniform", "magnitude", "uniform+")
# The results store: the shape of every row this script writes (by "arm"), and the claim it tests.
MODEL = "ChainCNN on Fashion-MNIST"
SHAPES = {arm: {"seed", "acc", "macs"} for arm in ("unpruned", *ARMS)}
PAPER = "Network Pruning via Transformable Architecture Search"
CLAIM = ("searching each layer's width and each stage's depth, then distilling the searched network, beats a fixed "
         "(uniformly scaled) shape and inherited-weight channel pruning at equal MACs and equal distillation")


def run_seed(args, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    train = load_fashion_mnist("train", limit=args.train_size)
    test = load_fashion_mnist("test", limit=args.test_size)
    x0 = train.tensors[0][:1]
    widths = json.loads(args.widths)
    teacher = ChainCNN(widths)
    t0 = time.perf_counter()
    fit(teacher, train, epochs=args.epochs, lr=0.05, batch_size=64, seed=seed, progress=False)
    full = count_macs(teacher, x0)
    rows = [dict(arm="unpruned", seed=seed, acc=accuracy(teacher, test), macs=full, widths=widths,
                 seconds=time.perf_counter() - t0)]
    cfg = TASConfig(target=args.target, search_epochs=args.search_epochs, arch_lr=args.arch_lr,
                    cost_weight=args.cost_weight, kd_epochs=args.kd_epochs, seed=seed, batch_size=64)
    t0 = time.perf_counter()
    report = search_widths(teacher, train, cfg)
    search_s = time.perf_counter() - t0
    kd = dict(lr=cfg.kd_lr, temperature=cfg.kd_temperature, weight=cfg.kd_weight, batch_size=cfg.batch_size, seed=seed)

    def student(arm: str, model, epochs: float, extra: dict) -> dict:
        t = time.perf_counter()
        distill_(model, teacher, train, epochs=epochs, **kd)
        return dict(arm=arm, seed=seed, acc=accuracy(model, test), macs=count_macs(model, x0), macs_full=full,
                    kd_epochs=epochs, seconds=time.perf_counter() - t, **extra)

    torch.manual_seed(seed)
    rows.append(student("tas", ChainCNN(report.widths), args.kd_epochs,
                        dict(widths=report.widths, search_seconds=search_s, search_steps=report.steps,
                             notes=report.notes, depth_probs=report.depth_probs)))
    uni = uniform_widths(widths, report.macs)
    torch.manual_seed(seed)
    rows.append(student("uniform", ChainCNN(uni), args.kd_epochs, dict(widths=uni)))
    pruned = copy.deepcopy(teacher)
    structured_prune_(pruned, x0, 1 - report.macs / full, "l1", target="macs", allocation="global",
                      ignore=[pruned.fc])
    got = [[m[0].out_channels for m in stage] for stage in pruned.stages]
    rows.append(student("magnitude", pruned, args.kd_epochs, dict(widths=got, acc_before_kd=None)))
    torch.manual_seed(seed)
    rows.append(student("uniform+", ChainCNN(uni), args.kd_epochs + args.search_epochs, dict(widths=uni)))
    return rows


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def verdict(diffs: list[float]) -> str:
    """held when the mean paired difference is positive by more than twice its standard error."""
    if len(diffs) < 2:
        return "one seed: no verdict"
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if mean > 2 * se:
        return "**held**"
    if mean < -2 * se:
        return "**not held** (worse)"
    return "**not held** (within noise)"


def table(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["arm"], r["seed"]): r for r in rows}
    out = [f"Seeds {seeds}; test accuracy mean ± sd (%); MACs as a fraction of the unpruned network's.\n",
           "| network | accuracy | MACs | widths (seed 0) | TAS − this, paired | claim |", "|---|---|---|---|---|---|"]
    for arm in ("unpruned",) + ARMS:
        sel = [by[(arm, s)] for s in seeds if (arm, s) in by]
        if not sel:
            continue
        macs = [r["macs"] / by[("unpruned", r["seed"])]["macs"] for r in sel]
        diff, claim = "", ""
        if arm not in ("unpruned", "tas"):
            d = [by[("tas", s)]["acc"] - by[(arm, s)]["acc"] for s in seeds if ("tas", s) in by and (arm, s) in by]
            diff, claim = _ms(d), verdict(d)
        out.append(f"| {arm} | {_ms([r['acc'] for r in sel])} | {statistics.fmean(macs):.1%} | {sel[0]['widths']} | "
                   f"{diff} | {claim} |")
    tas_rows = [by[("tas", s)] for s in seeds if ("tas", s) in by]
    if tas_rows:
        out.append(f"\nSearch: {statistics.fmean(r['search_seconds'] for r in tas_rows):.0f} s per seed "
                   f"({tas_rows[0]['search_steps']} steps); searched widths per seed: "
                   + "; ".join(str(r["widths"]) for r in tas_rows))
    return "\n".join(out)


def paper_results(rows: list[dict]) -> list[PaperResult]:
    """The TAS claim as the rows tested it: TAS against each other arm at the same MACs, paired by seed."""
    full = {r["seed"]: r["macs"] for r in rows if r["arm"] == "unpruned"}
    measured = [Measured(r["arm"], "", r["seed"], {"acc": r["acc"], "macs_fraction": r["macs"] / full[r["seed"]]
                                                   if r["seed"] in full else None}) for r in rows]
    verdict, why = compare(measured, "acc", "tas", [a for a in ARMS if a != "tas"])
    return [PaperResult(PAPER, CLAIM, verdict, why, ("acc", "macs_fraction"), measured, budget_of(rows),
                        percent=("acc", "macs_fraction"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--widths", default="[[16, 16], [32, 32], [64, 64]]", help="the unpruned ChainCNN, JSON")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--target", type=float, default=0.4, help="fraction of the unpruned MACs TAS aims at")
    p.add_argument("--search-epochs", type=float, default=2.0)
    p.add_argument("--arch-lr", type=float, default=0.05)
    p.add_argument("--cost-weight", type=float, default=2.0)
    p.add_argument("--kd-epochs", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_tas.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--db", default=None, help="also store the rows of --out, with the claim's verdict, in this results store")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        for seed in args.seeds:
            rows = run_seed(args, seed)
            append_rows(args.out, rows, vars(args), ("out", "table"))
            print(f"seed {seed} done: " + ", ".join(f"{r['arm']} {r['acc']:.3f}" for r in rows), flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table(rows))
    store_papers_or_exit(args.db, "papers_tas", MODEL, [args.out], SHAPES, "arm", paper_results)


if __name__ == "__main__":
    main()
