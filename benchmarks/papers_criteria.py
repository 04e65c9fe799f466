"""The issue-23 papers' criteria, allocations and training-time methods on Fashion-MNIST, at equal sparsity.

One SmallCNN (widths 16/32/64, 23 k parameters) per seed, trained dense for --epochs on --train-size
images; everything is measured on the first --test-size test images. Parts:

A. one-shot unstructured pruning of the trained model at --sparsities of the two inner convolutions' weights
   (the first convolution and the head stay dense, prunekit's default scope), test accuracy without
   fine-tuning (and with --a-ft after --ft-epochs of masked fine-tuning): magnitude with the uniform, global, ERK, LAMP and
   PQ-Index (SAP) allocations; rate-distortion (rd, measured output distortion + dynamic programme); Taylor
   and LRP (Pruning by Explaining) with a global ranking, their data a scarce reference set of
   --ref-per-class images per class. Also the rd paper's additivity: output distortion of two layers pruned
   together vs the sum of each alone.
B. Beta-Rank on a long-tailed training set (class c keeps --tail^c of its images): 50 % of the channels
   removed with beta_rank, l1, l2 and random importance; balanced (mean per-class) test accuracy without and
   after fine-tuning.
D. channel (filter) pruning of the trained model without fine-tuning, every score from the same scarce
   reference set: LRP (the paper's filter relevance, L2-normalised per layer), L1, L2, Taylor, Beta-Rank, random.
C. training-time methods at equal budget (--ft-epochs from the trained model): Lottery Jackpots (mask search,
   weights frozen) vs magnitude without / with weight fine-tuning at 90 %; PDP soft-mask fine-tuning vs
   magnitude + fine-tuning at 90 %; MaskSparsity (L1 on the selected BN scales) vs L1 on every BN scale
   (network slimming) vs the polarizer, then 50 % of the channels removed by |γ| without fine-tuning.

    python benchmarks/papers_criteria.py --seeds 0 1 2 --threads 1

The run behind the README table (one process per seed, the shared 2-core CPU at a load of ~25):

    python benchmarks/papers_criteria.py --seeds S --train-size 3000 --test-size 1000 --epochs 2 \
        --ft-epochs 0.25 --b-steps 0.5 --sparsities 0.5 0.8 --out seedS.jsonl

Writes one JSON line per seed to --out (default benchmarks/results/papers_criteria.jsonl) and prints the
markdown tables (mean ± standard deviation over the seeds) with --table. With --db FILE the rows of --out (and
--merge) also go into the results store, beside each paper's claim and verdict (``prunekit report`` shows them in
its papers group); ``--table --db FILE`` stores them without running.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Subset, TensorDataset

from _apps_common import budget_of, store_papers_or_exit

import prunekit as pk
from prunekit.bench.papers import Measured, PaperResult, compare
from prunekit.core.mask import get_mask, weight_of
from prunekit.core.scope import select_targets
from prunekit.datasets import load_fashion_mnist
from prunekit.methods.rd import distortion_curves
from prunekit.metrics.accuracy import accuracy
from prunekit.models import SmallCNN
from prunekit.structured import prune_ as structured_prune_
from prunekit.train import fit
from prunekit.train.jackpot import Jackpot
from prunekit.train.mask_sparsity import MaskSparsity
from prunekit.train.pdp import PDP
from prunekit.train.polarization import Polarizer

WIDTHS = (16, 32, 64)
PART_A = [("magnitude", "uniform"), ("magnitude", "global"), ("magnitude", "erk"), ("magnitude", "lamp"),
          ("magnitude", "pq"), ("rd", "-"), ("taylor", "global"), ("lrp", "global"), ("lrp-epsilon", "global")]


def balanced_accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in torch.utils.data.DataLoader(data, batch_size=1024)])
    y = data.tensors[1]
    return statistics.fmean(float((pred[y == c] == c).float().mean()) for c in y.unique().tolist())


def reference_set(train: TensorDataset, per_class: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1000 + seed)
    x, y = train.tensors
    idx = torch.cat([torch.nonzero(y == c).reshape(-1)[torch.randperm(int((y == c).sum()), generator=gen)[:per_class]]
                     for c in range(10)])
    return [(x[idx], y[idx])]


def part_a(dense: nn.Module, train, test, args, seed: int) -> list[dict]:
    ref = reference_set(train, args.ref_per_class, seed)
    calib = train.tensors[0][:256]
    rows = []
    for sparsity in args.sparsities:
        for method, allocation in PART_A:
            model = copy.deepcopy(dense)
            kwargs = dict(progress=False)
            if method == "rd":
                kwargs["example_inputs"] = calib
            else:
                kwargs["allocation"] = allocation
            if method in ("taylor", "lrp", "lrp-epsilon"):
                kwargs.update(data=ref, loss_fn=F.cross_entropy)
            if method == "lrp-epsilon":
                kwargs["rule"] = "epsilon"
            t0 = time.perf_counter()
            report = pk.prune_(model, method.split("-")[0], sparsity, **kwargs)
            secs = time.perf_counter() - t0
            acc0 = accuracy(model, test)
            acc1 = None
            if args.a_ft:
                fit(model, train, epochs=args.ft_epochs, lr=0.01, seed=seed, progress=False)
                acc1 = accuracy(model, test)
            rows.append(dict(part="A", seed=seed, method=method, allocation=allocation, sparsity=sparsity,
                             reached=report.sparsity, layers=report.layers, acc_no_ft=acc0, acc_ft=acc1,
                             prune_seconds=secs))
    # additivity of output distortion (the rd paper's key property), at 50 % per layer by magnitude
    model = copy.deepcopy(dense).eval()
    targets = select_targets(model)
    scores = {t.name: weight_of(t.module).detach().abs() for t in targets}
    curves = distortion_curves(model, targets, scores, [calib], 2)
    alone = sum(c[1][1] for c in curves.values())
    with torch.no_grad():
        ref_out = model(calib).double()
        pk.prune_(model, "magnitude", 0.5, allocation="uniform", progress=False)
        joint = float((model(calib).double() - ref_out).square().sum())
    rows.append(dict(part="A-additivity", seed=seed, sum_alone=alone, joint=joint, ratio=joint / alone))
    return rows


def part_d(dense: nn.Module, train, test, args, seed: int) -> list[dict]:
    """Channel (filter) pruning without fine-tuning, scores from the scarce reference set: the LRP paper's
    filter criterion against magnitude, Taylor, Beta-Rank and random."""
    ref = reference_set(train, args.ref_per_class, seed)
    x0 = train.tensors[0][:1]
    rows = []
    for sparsity in args.channel_sparsities:
        for importance in ("lrp", "l1", "l2", "taylor", "beta_rank", "random"):
            model = copy.deepcopy(dense)
            structured_prune_(model, x0, sparsity, importance, data=ref, loss_fn=F.cross_entropy, seed=seed,
                              ignore=[model.fc], allocation="global")
            rows.append(dict(part="D", seed=seed, importance=importance, sparsity=sparsity, acc=accuracy(model, test)))
    return rows


def long_tailed(train: TensorDataset, tail: float) -> TensorDataset:
    x, y = train.tensors
    keep = torch.cat([torch.nonzero(y == c).reshape(-1)[: max(20, round(int((y == c).sum()) * tail ** c))]
                      for c in range(10)])
    return TensorDataset(x[keep], y[keep])


def part_b(train, test, args, seed: int) -> list[dict]:
    lt = long_tailed(train, args.tail)
    torch.manual_seed(seed)
    dense = SmallCNN(WIDTHS)
    fit(dense, lt, epochs=args.b_steps * args.epochs * len(train) / len(lt), lr=0.05, seed=seed, progress=False)
    rows = [dict(part="B", seed=seed, importance="dense", train_size=len(lt), bal_no_ft=balanced_accuracy(dense, test),
                 bal_ft=None, acc=accuracy(dense, test))]
    x0 = lt.tensors[0][:1]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lt), generator=gen)[:512]
    calib = [(lt.tensors[0][perm], lt.tensors[1][perm])]
    for importance in ("beta_rank", "l1", "l2", "random"):
        model = copy.deepcopy(dense)
        structured_prune_(model, x0, 0.5, importance, data=calib, seed=seed, ignore=[model.fc])
        b0 = balanced_accuracy(model, test)
        fit(model, lt, epochs=args.b_steps * args.ft_epochs * len(train) / len(lt), lr=0.01, seed=seed, progress=False)
        rows.append(dict(part="B", seed=seed, importance=importance, train_size=len(lt), bal_no_ft=b0,
                         bal_ft=balanced_accuracy(model, test), acc=accuracy(model, test)))
    return rows


def part_c(dense: nn.Module, train, test, args, seed: int) -> list[dict]:
    rows = []
    ft = dict(epochs=args.ft_epochs, seed=seed, progress=False)
    lr = args.ft_lr
    if not args.c_bn_only:
        rows += _part_c_masks(dense, train, test, args, seed, ft, lr)
    rows += _part_c_bn(dense, train, test, args, seed, ft, lr)
    return rows


def _part_c_masks(dense: nn.Module, train, test, args, seed: int, ft: dict, lr: float) -> list[dict]:
    rows = []
    # Lottery Jackpots vs magnitude at 90 %
    model = copy.deepcopy(dense)
    pk.prune_(model, "magnitude", 0.9, progress=False)
    rows.append(dict(part="C", seed=seed, what="magnitude 90%, no training", acc=accuracy(model, test)))
    fit(model, train, lr=lr, **ft)
    rows.append(dict(part="C", seed=seed, what="magnitude 90% + weight fine-tuning", acc=accuracy(model, test)))
    model = copy.deepcopy(dense)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # running statistics untouched too: only the mask moves
    jp = Jackpot(model, 0.9)
    fit(model, train, lr=args.jackpot_lr, weight_decay=0.0, parameters=jp.parameters(), on_step=lambda s: jp.update_masks_(), **ft)
    rep = jp.finalize_()
    rows.append(dict(part="C", seed=seed, what="Lottery Jackpot 90% (mask search, weights frozen)",
                     acc=accuracy(model, test), reached=rep.sparsity, flips=jp.flips))
    # PDP vs magnitude + fine-tuning at 90 %
    model = copy.deepcopy(dense)
    pdp = PDP(model, 0.9, tau=args.tau)
    fit(model, train, lr=lr, **ft)
    rep = pdp.finalize_()
    rows.append(dict(part="C", seed=seed, what="PDP 90% (soft-mask fine-tuning, then hard)", acc=accuracy(model, test),
                     reached=rep.sparsity))
    return rows


def _part_c_bn(dense: nn.Module, train, test, args, seed: int, ft: dict, lr: float) -> list[dict]:
    """BN-scale regularizers, then 50 % of the channels removed by |γ|, no fine-tuning."""
    rows = []
    x0 = train.tensors[0][:1]
    for name in ("no regularizer", "L1 on every γ (slimming)", "MaskSparsity", "polarizer"):
        model = copy.deepcopy(dense)
        if name == "no regularizer":
            fit(model, train, lr=lr, **ft)
        elif name == "polarizer":
            pol = Polarizer(model, t=1.2, lam=args.lam, upper=10.0)
            fit(model, train, lr=lr, batch_loss=lambda m, x, y: F.cross_entropy(m(x), y) + pol.penalty(),
                on_step=lambda s: pol.clamp_(), **ft)
        else:
            reg = MaskSparsity(model, 0.5, lam=args.lam)
            if name.startswith("L1"):
                reg.masks = {n: torch.ones_like(msk) for n, msk in reg.masks.items()}
            fit(model, train, lr=lr, batch_loss=lambda m, x, y: F.cross_entropy(m(x), y) + reg.penalty(), **ft)
        before = accuracy(model, test)
        structured_prune_(model, x0, 0.5, "bn_scale", allocation="global", ignore=[model.fc])
        rows.append(dict(part="C-bn", seed=seed, what=name, lam=args.lam, acc_before_cut=before,
                         acc=accuracy(model, test)))
    return rows


def _save(args, rows: list[dict]) -> list[dict]:
    with open(args.out, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                                if k not in ("out", "table", "merge")}}) + "\n")
    return rows


def run_seed(args, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    train = load_fashion_mnist("train", limit=args.train_size)
    test = load_fashion_mnist("test", limit=args.test_size)
    dense = SmallCNN(WIDTHS)
    t0 = time.perf_counter()
    fit(dense, train, epochs=args.epochs, lr=0.05, seed=seed, progress=False)
    rows = _save(args, [dict(part="dense", seed=seed, acc=accuracy(dense, test), train_seconds=time.perf_counter() - t0)])
    if "A" in args.parts:
        rows += _save(args, part_a(dense, train, test, args, seed))
    if "C" in args.parts:
        rows += _save(args, part_c(dense, train, test, args, seed))
    if "B" in args.parts:
        rows += _save(args, part_b(train, test, args, seed))
    if "D" in args.parts:
        rows += _save(args, part_d(dense, train, test, args, seed))
    return rows


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def tables(rows: list[dict]) -> str:
    out = []
    seeds = sorted({r["seed"] for r in rows})
    dense = [r["acc"] for r in rows if r["part"] == "dense"]
    out.append(f"Dense SmallCNN{WIDTHS}: {_ms(dense)} % test accuracy (seeds {seeds}; mean ± sd).\n")
    a = [r for r in rows if r["part"] == "A"]
    if a:
        out.append("| method | allocation | sparsity | no fine-tuning | + fine-tuning |\n|---|---|---|---|---|")
        for s in sorted({r["sparsity"] for r in a}):
            for method, alloc in PART_A:
                sel = [r for r in a if r["method"] == method and r["allocation"] == alloc and r["sparsity"] == s]
                if sel:
                    out.append(f"| {method} | {alloc} | {s:.0%} | {_ms([r['acc_no_ft'] for r in sel])} | "
                               f"{_ms([r['acc_ft'] for r in sel])} |")
        add = [r["ratio"] for r in rows if r["part"] == "A-additivity"]
        if add:
            out.append(f"\nAdditivity: joint distortion / sum of single-layer distortions = "
                       f"{statistics.fmean(add):.3f} ± {statistics.stdev(add) if len(add) > 1 else 0:.3f}\n")
    b = [r for r in rows if r["part"] == "B"]
    if b:
        out.append("| importance (long-tailed data, 50 % channels) | balanced acc., no fine-tuning | + fine-tuning |"
                   "\n|---|---|---|")
        for imp in ("dense", "beta_rank", "l1", "l2", "random"):
            sel = [r for r in b if r["importance"] == imp]
            if sel:
                out.append(f"| {imp} | {_ms([r['bal_no_ft'] for r in sel])} | {_ms([r['bal_ft'] for r in sel])} |")
    d = [r for r in rows if r["part"] == "D"]
    if d:
        out.append("\n| channel importance (global, no fine-tuning, 100 reference images) | "
                   + " | ".join(f"{s:.0%} of channels" for s in sorted({r['sparsity'] for r in d}))
                   + " |\n|---|" + "---|" * len({r['sparsity'] for r in d}))
        for imp in dict.fromkeys(r["importance"] for r in d):
            out.append(f"| {imp} | " + " | ".join(_ms([r["acc"] for r in d if r["importance"] == imp and r["sparsity"] == s])
                                                 for s in sorted({r['sparsity'] for r in d})) + " |")
    c = [r for r in rows if r["part"] == "C"]
    if c:
        out.append("\n| training-time method (equal budget) | test accuracy |\n|---|---|")
        for what in dict.fromkeys(r["what"] for r in c):
            out.append(f"| {what} | {_ms([r['acc'] for r in c if r['what'] == what])} |")
    cb = [r for r in rows if r["part"] == "C-bn"]
    if cb:
        out.append("\n| BN regularizer, then 50 % channels cut by |γ| | before the cut | after, no fine-tuning |"
                   "\n|---|---|---|")
        for what in dict.fromkeys(r["what"] for r in cb):
            sel = [r for r in cb if r["what"] == what]
            out.append(f"| {what} | {_ms([r['acc_before_cut'] for r in sel])} | {_ms([r['acc'] for r in sel])} |")
    return "\n".join(out)


# The results store: the shape of every row this script writes (by "part"), and the claims it tests.
MODEL = f"SmallCNN{WIDTHS} on Fashion-MNIST"
SHAPES = {"dense": {"seed", "acc"}, "A": {"seed", "method", "allocation", "sparsity", "acc_no_ft"},
          "A-additivity": {"seed", "ratio"}, "B": {"seed", "importance", "bal_no_ft", "bal_ft"},
          "C": {"seed", "what", "acc"}, "C-bn": {"seed", "what", "acc", "acc_before_cut"},
          "D": {"seed", "importance", "sparsity", "acc"}}
ALLOCATIONS = ["magnitude, uniform", "magnitude, global", "magnitude, erk", "magnitude, lamp"]
JACKPOT, MAG, MAG_FT = ("Lottery Jackpot 90% (mask search, weights frozen)", "magnitude 90%, no training",
                        "magnitude 90% + weight fine-tuning")


def _arm(r: dict) -> str:
    return r["method"] if r["allocation"] == "-" else f"{r['method']}, {r['allocation']}"


def paper_results(rows: list[dict]) -> list[PaperResult]:
    """Every claim the rows hold a test of: part A's allocations and criteria (rd, PQ Index, global magnitude, LRP's
    weights), B (Beta-Rank), D (LRP's filters), C (Lottery Jackpots, PDP) and C-bn (MaskSparsity, the polarizer)."""
    out = []

    def add(paper, claim, rows_, arm, baselines, metrics, test="", margin=0.0, percent=None):
        verdict, why = compare(rows_, metrics[0], arm, baselines, margin=margin)
        out.append(PaperResult(paper, claim, verdict, why, metrics, rows_, budget_of(part), test,
                               percent or metrics))

    part = [r for r in rows if r["part"] == "A"]
    if part:
        a = [Measured(_arm(r), f"{r['sparsity']:.0%}", r["seed"], {"acc_no_ft": r["acc_no_ft"]}) for r in part]
        add("Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural Networks",
            "per-layer sparsities from the measured output distortion and a dynamic programme (rd) beat other "
            "layer-adaptive allocations at equal sparsity (one-shot, no fine-tuning)",
            a, "rd", ALLOCATIONS, ("acc_no_ft",))
        add("Pruning Deep Neural Networks from a Sparsity Perspective",
            "allocating the sparsity by the PQ Index (pq) beats uniform and other layer-adaptive allocations at equal "
            "sparsity (one-shot, no fine-tuning; SAP's adaptive amount is not what this tests)",
            a, "magnitude, pq", ALLOCATIONS, ("acc_no_ft",))
        add("Is Complexity Required for Neural Network Pruning? A Case Study on Global Magnitude Pruning",
            "global magnitude pruning matches more complex allocations (rd, LAMP, ERK): held when it loses less than "
            "1 point to each, by more than twice the standard error", a, "magnitude, global",
            ["rd", "magnitude, lamp", "magnitude, erk"], ("acc_no_ft",), margin=-0.01)
        add("Pruning by Explaining: A Novel Criterion for Deep Neural Network Pruning",
            "LRP relevance as the pruning criterion beats magnitude and Taylor without fine-tuning when the "
            "reference data are scarce (10 images per class)", a, "lrp, global",
            ["magnitude, global", "taylor, global"], ("acc_no_ft",), test="weights (part A)")
    part = [r for r in rows if r["part"] == "D"]
    if part:
        d = [Measured(r["importance"], f"{r['sparsity']:.0%} of channels", r["seed"], {"acc": r["acc"]}) for r in part]
        add("Pruning by Explaining: A Novel Criterion for Deep Neural Network Pruning",
            "the LRP filter relevance beats magnitude (L1, L2), Taylor and random filter ranks without fine-tuning "
            "when the reference data are scarce", d, "lrp", ["l1", "l2", "taylor", "random"], ("acc",),
            test="filters (part D)")
    part = [r for r in rows if r["part"] == "B"]
    if part:
        b = [Measured(r["importance"], "50% of channels", r["seed"], {"bal_ft": r["bal_ft"], "bal_no_ft": r["bal_no_ft"]})
             for r in part]
        add("Beta-Rank: A Robust Convolutional Filter Pruning Method For Imbalanced Medical Image Analysis",
            "ranking filters by Beta-Rank (their input/output statistics with their values) keeps the balanced accuracy "
            "on imbalanced data better than value-only ranks (L1, L2), after fine-tuning", b, "beta_rank",
            ["l1", "l2"], ("bal_ft", "bal_no_ft"))
    part = [r for r in rows if r["part"] == "C"]
    if part:
        c = [Measured(r["what"], "90%", r["seed"], {"acc": r["acc"]}) for r in part]
        add("Lottery Jackpots Exist in Pre-trained Models",
            "searching only a mask on the trained weights (weights frozen) finds a sparse network as accurate as "
            "magnitude pruning with weight fine-tuning at the same budget, and better than magnitude alone",
            c, JACKPOT, [MAG, MAG_FT], ("acc",))
        add("PDP: Parameter-free Differentiable Pruning is All You Need",
            "PDP's soft masks while fine-tuning beat magnitude pruning + fine-tuning at equal sparsity and budget",
            c, "PDP 90% (soft-mask fine-tuning, then hard)", [MAG_FT], ("acc",))
    part = [r for r in rows if r["part"] in ("C-bn", "dense")]

    def strength(r: dict) -> str:  # the setting: λ, and the fine-tune's length where it is not the first runs' 0.6
        cfg = r.get("config", {})
        lam_ = r.get("lam", cfg.get("lam"))
        ft = cfg.get("ft_epochs", 0.6)
        return f"{lam_}" if ft == 0.6 else f"{lam_}, {ft} epochs"

    if any(r["part"] == "C-bn" for r in part):
        lam = {json.dumps(r.get("config", {}), sort_keys=True): strength(r) for r in part if r["part"] == "C-bn"}
        bn, seen = [], set()
        for r in part:
            key = strength(r)
            if r["part"] == "dense":  # the trained model before any regularizer, once per seed and strength
                if json.dumps(r.get("config", {}), sort_keys=True) not in lam or (key, r["seed"]) in seen:
                    continue
                seen.add((key, r["seed"]))
                bn.append(Measured("trained model (no regularizer, no cut)", f"λ {key}", r["seed"], {"acc": r["acc"]}))
            else:
                bn.append(Measured(r["what"], f"λ {key}", r["seed"], {"acc": r["acc"],
                                                                      "acc_before_cut": r["acc_before_cut"]}))
        part = [r for r in part if r["part"] == "C-bn"]
        add("Pruning-aware Sparse Regularization for Network Pruning",
            "L1 only on the BN scales selected for pruning (MaskSparsity) leaves a better network after the channel "
            "cut than L1 on every scale (network slimming), without fine-tuning", bn, "MaskSparsity",
            ["L1 on every γ (slimming)"], ("acc", "acc_before_cut"))
        add("Learning a Consensus Sub-Network with Polarization Regularization and One Pass Training",
            "one pass of training with the polarizer gives a sub-network that needs no fine-tuning: the 50 % channel "
            "cut loses less than 1 point against the trained model", bn, "polarizer",
            ["trained model (no regularizer, no cut)"], ("acc", "acc_before_cut"), margin=-0.01)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=12000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--ft-epochs", type=float, default=0.5)
    p.add_argument("--ref-per-class", type=int, default=10)
    p.add_argument("--tail", type=float, default=0.6)
    p.add_argument("--tau", type=float, default=1e-4)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--c-bn-only", action="store_true", help="part C: only the BatchNorm regularizers")
    p.add_argument("--ft-lr", type=float, default=0.05, help="part C: learning rate of every fine-tuning")
    p.add_argument("--jackpot-lr", type=float, default=5.0, help="part C: learning rate of the jackpot scores")
    p.add_argument("--parts", default="ABC")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--channel-sparsities", type=float, nargs="+", default=[0.3, 0.5], help="part D")
    p.add_argument("--a-ft", action="store_true", help="part A: also fine-tune each pruned model (--ft-epochs)")
    p.add_argument("--b-steps", type=float, default=1.0, help="part B: training steps as a fraction of the dense run's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_criteria.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the tables of --out")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="more result files to tabulate with --out")
    p.add_argument("--db", default=None, help="also store the rows of --out (and --merge), with each claim's verdict, "
                                              "in this results store")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        for seed in args.seeds:
            run_seed(args, seed)
            print(f"seed {seed} done", flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    rows += [json.loads(line) for extra in args.merge for line in extra.read_text().splitlines() if line.strip()]
    print(tables(rows))
    store_papers_or_exit(args.db, "papers_criteria", MODEL, [args.out, *args.merge], SHAPES, "part", paper_results)


if __name__ == "__main__":
    main()
