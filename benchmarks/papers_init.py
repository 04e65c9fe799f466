"""Pruning at initialization, trained from scratch on Fashion-MNIST: PreCropping (part P) and the layer lottery
(part L), each arm at an equal budget (parameters in P, MACs in L), equal epochs and the same seed's data order.

Part P — "Structured Pruning is All You Need for Pruning CNNs at Initialization" (PreCropping). A SmallCNN
(conv widths --p-widths, then the classifier), pruned at initialization to --p-sparsity of its weights
(every conv and the classifier in scope), then trained for --epochs:

  synflow      SynFlow masks (global ranking, --synflow-iterations rounds), weights masked through training;
  random@ratio random masks with SynFlow's per-layer densities (which weights go: random; how many: SynFlow's);
  precrop      a dense network whose channel counts follow SynFlow's per-layer densities
               (prunekit.structured.precrop: α_{l-1}·α_l ≈ d_l), freshly initialised;
  uniform      a dense network with every width scaled by one factor to precrop's parameter count.

Part L — "When Layers Play the Lottery, all Tickets Win at Initialization". A ResNetStyle (--l-widths, --l-blocks
basic blocks a stage); --l-remove of its removable blocks (shape-preserving residual blocks) are replaced by
identities at initialization, then the network is trained for --epochs:

  grasp-layers  the blocks with the lowest GraSP score removed (prunekit.structured.layer_lottery);
  random-layers the same number of removable blocks, drawn at random;
  filters       the unpruned depth with every width scaled to grasp-layers' MACs (the filter ticket at equal
                compute: removing early, high-resolution blocks cuts MACs far more than parameters);
  unpruned      the full network.

Test accuracy on --test-size test images; training wall and CPU time per arm. Verdicts (prunekit.bench.papers'
rule: paired over seeds, held when the mean is above twice its standard error): "matches" claims are tested with a
tolerance of --tolerance (a loss smaller than that counts as matching; stated beside the verdict).

    nice -n 10 python benchmarks/papers_init.py --seeds 0 1 2 --parts P L --threads 1

Writes one JSON line per arm and seed to --out (default benchmarks/results/papers_init.jsonl); --table prints the
tables of --out; --db FILE stores the rows and verdicts in the results store (``--table --db FILE`` without running).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from _apps_common import append_rows, budget_of, store_papers_or_exit

import prunekit as pk
from prunekit.bench.papers import Measured, PaperResult, compare, combine
from prunekit.core.mask import get_mask, set_mask_
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.accuracy import accuracy
from prunekit.metrics.macs import count_macs
from prunekit.models import ResNetStyle, SmallCNN
from prunekit.structured.layer_lottery import prune_layers_at_init_, removable_blocks
from prunekit.structured.precrop import precrop_widths
from prunekit.train import fit

MODEL = "SmallCNN (part P) and ResNetStyle (part L) on Fashion-MNIST, trained from initialization"
P_ARMS = ("dense", "synflow", "random@ratio", "precrop", "uniform")
L_ARMS = ("unpruned", "grasp-layers", "random-layers", "filters")
SHAPES = {"P": {"seed", "arm", "acc", "params"}, "L": {"seed", "arm", "acc", "params", "macs"}}
P_PAPER = "Structured Pruning is All You Need for Pruning CNNs at Initialization (PreCropping)"
L_PAPER = "When Layers Play the Lottery, all Tickets Win at Initialization"
SCOPE = {"skip_first_conv": False, "skip_output": False}


def params(model: nn.Module) -> int:
    """Parameters that carry weight: a masked tensor counts its kept entries only."""
    total = sum(p.numel() for p in model.parameters())
    for _, m in model.named_modules():
        mask = get_mask(m) if hasattr(m, "parametrizations") else None
        if mask is not None:
            total -= int(mask.numel() - mask.sum())
    return total


def train_eval(model: nn.Module, train, test, args, seed: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, train, epochs=args.epochs, lr=args.lr, seed=seed, progress=False)
    return {"acc": accuracy(model, test), "params": params(model), "train_seconds": time.perf_counter() - t0,
            "train_cpu_seconds": time.process_time() - c0}


def cnn(widths, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(tuple(widths))


def chain_widths(model: SmallCNN) -> dict[str, int]:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {**{n: model.get_submodule(n).out_channels for n in convs}, "fc": model.fc.out_features}


def scaled(widths, factor: float) -> list[int]:
    return [max(1, round(w * factor)) for w in widths]


def match_budget(build, widths, target: float, measure=None) -> list[int]:
    """Widths scaled by the one factor whose network's ``measure`` (default: parameters) is nearest ``target``
    (bisection on the factor)."""
    measure = measure or params
    lo, hi = 0.01, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if measure(build(scaled(widths, mid))) < target:
            lo = mid
        else:
            hi = mid
    return min((scaled(widths, f) for f in (lo, hi)), key=lambda w: abs(measure(build(w)) - target))


def part_p(args, seed: int, train, test) -> list[dict]:
    x0 = next(iter(torch.utils.data.DataLoader(train, batch_size=64)))[0]
    rows = []

    def row(arm, model, extra=None):
        r = {"part": "P", "seed": seed, "arm": arm, "sparsity": args.p_sparsity, **train_eval(model, train, test, args, seed),
             **(extra or {})}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        rows.append(r)

    row("dense", cnn(args.p_widths, seed))
    # SynFlow at init (global ranking, iterative), masks kept through training
    m = cnn(args.p_widths, seed)
    pk.prune_(m, "synflow", args.p_sparsity, example_inputs=x0, allocation="global", scope=SCOPE,
              iterations=args.synflow_iterations, progress=False)
    got = {n: float(get_mask(mod).float().mean()) for n, mod in m.named_modules() if get_mask(mod) is not None}
    row("synflow", m, {"densities": got})
    # random masks at SynFlow's per-layer densities
    r = cnn(args.p_widths, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    for n, d in got.items():
        mod = r.get_submodule(n)
        k = round(d * mod.weight.numel())
        keep = torch.zeros(mod.weight.numel(), dtype=torch.bool)
        keep[torch.randperm(mod.weight.numel(), generator=g)[:k]] = True
        set_mask_(mod, keep.view_as(mod.weight))
    row("random@ratio", r, {"densities": got})
    # PreCropping: channel counts from the iterative SynFlow densities (the masks' own), a fresh dense network
    widths = chain_widths(cnn(args.p_widths, seed))
    crop = precrop_widths(widths, {n: got.get(n, 1.0) for n in widths})
    narrow = [crop[n] for n in widths][:-1]
    row("precrop", cnn(narrow, seed), {"widths": narrow})
    uni = match_budget(lambda w: SmallCNN(tuple(w)), args.p_widths, params(cnn(narrow, seed)))
    row("uniform", cnn(uni, seed), {"widths": uni})
    return rows


def resnet(widths, blocks: int, seed: int) -> ResNetStyle:
    torch.manual_seed(seed)
    return ResNetStyle(tuple(widths), blocks=blocks)


def part_l(args, seed: int, train, test) -> list[dict]:
    rows = []
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    batches = [b for _, b in zip(range(args.grasp_batches), loader)]
    x0 = batches[0][0][:8]

    def row(arm, model, extra=None):
        r = {"part": "L", "seed": seed, "arm": arm, "macs": count_macs(model, x0[:1]),
             **train_eval(model, train, test, args, seed), **(extra or {})}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        rows.append(r)

    row("unpruned", resnet(args.l_widths, args.l_blocks, seed))
    m = resnet(args.l_widths, args.l_blocks, seed)
    rep = prune_layers_at_init_(m, x0, args.l_remove, "grasp", data=batches, loss_fn=F.cross_entropy)
    row("grasp-layers", m, {"removed": rep.removed, "removable": len(rep.scores)})
    m = resnet(args.l_widths, args.l_blocks, seed)
    found = removable_blocks(m, x0)
    g = torch.Generator().manual_seed(2000 + seed)
    gone = [found[i] for i in torch.randperm(len(found), generator=g)[:args.l_remove].tolist()]
    prune_layers_at_init_(m, x0, args.l_remove, "magnitude", blocks=gone)
    row("random-layers", m, {"removed": gone})
    w = match_budget(lambda w: ResNetStyle(tuple(w), blocks=args.l_blocks), args.l_widths, rows[1]["macs"],
                     lambda m: count_macs(m, x0[:1]))
    row("filters", resnet(w, args.l_blocks, seed), {"widths": w})
    return rows


def paper_results(rows: list[dict]) -> list[PaperResult]:
    out = []
    tol = -(rows[0].get("config", {}).get("tolerance", 0.01))
    p = [r for r in rows if r["part"] == "P"]
    if p:
        meas = [Measured(r["arm"], "", r["seed"], {"acc": r["acc"], "params": r["params"]}) for r in p]
        v1, w1 = compare(meas, "acc", "random@ratio", ["synflow"], margin=tol)
        v2, w2 = compare(meas, "acc", "precrop", ["synflow"], margin=tol)
        v3, w3 = compare(meas, "acc", "precrop", ["uniform"])
        claim = ("the layerwise compression ratio, not which weights, sets a pruned-at-initialization CNN's accuracy "
                 "(random weights at SynFlow's ratios match SynFlow), and channel-level PreCropping to those ratios "
                 "matches weight-level SynFlow")
        out.append(PaperResult(P_PAPER, claim, combine([v1, v2]),
                               f"ratio, not weights: {w1}. PreCrop vs SynFlow: {w2}. (Not part of the claim: PreCrop vs "
                               f"a uniformly narrowed net at equal parameters — {v3}: {w3})", ("acc", "params"), meas,
                               budget_of(p), test="accuracy", percent=("acc",)))
    lr = [r for r in rows if r["part"] == "L"]
    if lr:
        meas = [Measured(r["arm"], "", r["seed"], {"acc": r["acc"], "params": r["params"], "macs": r["macs"],
                                                   "train_cpu_seconds": r["train_cpu_seconds"]}) for r in lr]
        v1, w1 = compare(meas, "acc", "grasp-layers", ["unpruned"], margin=tol)
        v2, w2 = compare(meas, "acc", "grasp-layers", ["filters"])
        speed = [Measured(r["arm"], "", r["seed"], {"speed": -r["train_cpu_seconds"]}) for r in lr]
        v3, w3 = compare(speed, "speed", "grasp-layers", ["unpruned"], percent=False)
        v4, w4 = compare(meas, "acc", "grasp-layers", ["random-layers"])
        claim = ("removing whole layers at initialization gives a winning ticket (the accuracy of the unpruned "
                 "network), trains faster, and beats filter pruning at initialization at equal MACs")
        out.append(PaperResult(L_PAPER, claim, combine([v1, v2, v3]),
                               f"ticket: {w1}. vs filters: {w2}. faster (−CPU seconds of training): {w3}. (Not part of "
                               f"the claim: GraSP's choice vs as many random blocks — {v4}: {w4})", ("acc", "macs", "params"), meas,
                               budget_of(lr), test="accuracy and training time", percent=("acc",)))
    return out


def table(rows: list[dict]) -> str:
    out = []
    for part, arms in (("P", P_ARMS), ("L", L_ARMS)):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        seeds = sorted({r["seed"] for r in sel})
        out += [f"\nPart {part}, seeds {seeds}: test accuracy (%, mean ± sd), parameters, training CPU s",
                "| arm | accuracy | per seed | parameters | MACs | training CPU s |", "|---|---|---|---|---|---|"]
        for arm in arms:
            a = [r for r in sel if r["arm"] == arm]
            if not a:
                continue
            acc = [100 * r["acc"] for r in a]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            macs = f"{statistics.fmean(r['macs'] for r in a) / 1e6:.1f} M" if "macs" in a[0] else "–"
            out.append(f"| {arm} | {statistics.fmean(acc):.2f} ± {sd:.2f} | {' / '.join(f'{x:.2f}' for x in acc)} | "
                       f"{statistics.fmean(r['params'] for r in a):,.0f} | {macs} | "
                       f"{statistics.fmean(r['train_cpu_seconds'] for r in a):.0f} |")
    for res in paper_results(rows):
        out.append(f"\n**{res.paper}** — {res.verdict}: {res.why}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parts", nargs="+", choices=["P", "L"], default=["P", "L"])
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--p-widths", type=int, nargs=3, default=[32, 64, 128])
    p.add_argument("--p-sparsity", type=float, default=0.9)
    p.add_argument("--synflow-iterations", type=int, default=100)
    p.add_argument("--l-widths", type=int, nargs=3, default=[16, 32, 64])
    p.add_argument("--l-blocks", type=int, default=2)
    p.add_argument("--l-remove", type=int, default=2)
    p.add_argument("--grasp-batches", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.01, help="'matches' within this accuracy loss (1 point)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_init.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the tables of --out")
    p.add_argument("--db", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        train = load_fashion_mnist("train", limit=args.train_size)
        test = load_fashion_mnist("test", limit=args.test_size)
        for seed in args.seeds:
            for part in args.parts:
                rows = (part_p if part == "P" else part_l)(args, seed, train, test)
                append_rows(args.out, rows, vars(args), ("out", "table", "db", "threads", "parts", "seeds"))
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table(rows))
    store_papers_or_exit(args.db, "papers_init", MODEL, [args.out], SHAPES, "part", paper_results)


if __name__ == "__main__":
    main()
