"""The two ViT papers of issue 23 on Fashion-MNIST: LPViT (block-structured, hardware-aware pruning of a ViT) and
DIMAP (data-independent module-aware pruning of a Swin), each against its baselines at equal sparsity.

Per seed, a tiny timm ViT (28×28 grey images, 4×4 patches: 49 patches + a class token; --vit-dim, --vit-depth)
and a tiny timm Swin (2×2 patches: a 14×14 grid, window 7, two stages with a patch merging between; --swin-dim)
are trained from scratch with AdamW for --steps steps on the first --train-size training images (cached under
--cache), then pruned one-shot, without fine-tuning, and measured on the first --test-size test images:

A. ViT, the pruned layers every block's qkv / proj / fc1 / fc2 (prunekit's default scope: the patch embedding
   and the head stay dense), at --sparsities:
   - ``lpvit``: 4×4 blocks (--block), Fisher block scores on --calib-batches batches of 32 training images, each
     layer's block sparsity from the MACs-ranked allocation (here every layer sees the same 50 tokens, so the
     MAC budget is the weight budget: equal sparsity);
   - uniform block magnitude (the same blocks, |W| summed per block, every layer at the sparsity), and the same
     ranked globally (which separates LPViT's score from its across-layer allocation);
   - unstructured magnitude (uniform per layer), the accuracy ceiling of masks of this size.
   Time: the pruned layers' products at the model's shape (64 images × 50 tokens = 3,200 rows) on one thread:
   dense ``F.linear`` vs ``torch.sparse`` BSR (the LPViT mask's blocks) vs CSR (the unstructured mask), every
   layer of the seed-0 model, through ``prunekit.infra.latency.time_interleaved``; and one DeiT-S-sized layer
   (1536×384, 197 tokens) with a random block mask at the same sparsity; ``--deit-sweep`` times that layer alone
   at more sparsities and block sizes, to see where, if anywhere, block sparsity pays on this CPU.
B. Swin, every Linear but the head (the patch merging's reduction included), at --swin-sparsities: ``dimap``
   (module-aware, per stage and role, ranked globally) vs global magnitude; with uniform magnitude and
   ``dimap`` with one module per layer (= LAMP) as the two ablations (no module grouping / per-layer groups).

    python benchmarks/papers_vit.py --seeds 0 1 2 --threads 1
    python benchmarks/papers_vit.py --deit-sweep --time-budget 10

Writes one JSON line per seed to --out (default benchmarks/results/papers_vit.jsonl), the timing to
--timing-out, and prints the markdown tables (mean ± standard deviation over the seeds) with --table. With --db
FILE the rows of --out also go into the results store, beside each claim's verdict (``prunekit report`` shows them
in its papers group); ``--table --db FILE`` stores them without running.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from _apps_common import budget_of, store_papers_or_exit  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.bench.papers import Measured, PaperResult, compare  # noqa: E402
from prunekit.core.mask import get_mask  # noqa: E402
from prunekit.criteria.dimap import module_of  # noqa: E402
from prunekit.datasets import load_fashion_mnist  # noqa: E402
from prunekit.infra.latency import time_interleaved  # noqa: E402
from prunekit.models.vision import import_timm  # noqa: E402


def build_vit(dim: int, depth: int) -> nn.Module:
    timm = import_timm()
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1,
                             num_classes=10, embed_dim=dim, depth=depth, num_heads=4, mlp_ratio=2.0)


def build_swin(dim: int) -> nn.Module:
    timm = import_timm()
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=28, patch_size=2, in_chans=1,
                             num_classes=10, embed_dim=dim, depths=(2, 2), num_heads=(2, 4), window_size=7,
                             mlp_ratio=2.0)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> dict:
    """AdamW with a warm-up and a cosine decay, random 2-pixel shifts; returns the run's record."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    w0, c0 = time.perf_counter(), time.process_time()
    perm = torch.randperm(len(x), generator=gen)
    for step in range(steps):
        start = (step * batch) % len(x)
        if start + batch > len(x):
            perm = torch.randperm(len(x), generator=gen)
            start = 0
        idx = perm[start:start + batch]
        xb = F.pad(x[idx], (2, 2, 2, 2), value=float(x.min()))
        dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
        loss = F.cross_entropy(model(xb[:, :, dy:dy + 28, dx:dx + 28]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"    step {step + 1}/{steps} loss {loss.item():.3f} {time.perf_counter() - w0:.0f} s", flush=True)
    model.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "train_wall_s": time.perf_counter() - w0,
            "train_cpu_s": time.process_time() - c0, "final_loss": loss.item()}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def trained(name: str, make, args, x, y, seed: int) -> tuple[nn.Module, dict]:
    """The dense model of ``name`` for ``seed``, trained here or read from --cache."""
    path = args.cache / f"{name}_seed{seed}_{args.steps}x{args.batch}_{args.train_size}.pt"
    torch.manual_seed(seed)
    model = make()
    if path.exists():
        blob = torch.load(path, weights_only=False)
        model.load_state_dict(blob["state"])
        return model.eval(), blob["record"]
    print(f"  training {name} (seed {seed})", flush=True)
    record = train(model, x, y, args.steps, args.batch, args.lr, seed)
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": model.state_dict(), "record": record}, tmp)
    tmp.replace(path)
    return model.eval(), record


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: get_mask(m) for n, m in model.named_modules() if get_mask(m) is not None}


def part_a(dense: nn.Module, train_xy, test_xy, args, seed: int) -> tuple[list[dict], dict]:
    """LPViT vs uniform block magnitude vs unstructured magnitude on the ViT; returns rows and seed-0 masks."""
    x, y = train_xy
    gen = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(len(x), generator=gen)[: 32 * args.calib_batches]
    calib = [(x[idx[i:i + 32]], y[idx[i:i + 32]]) for i in range(0, len(idx), 32)]
    block = f"block:{args.block}x{args.block}"
    runs = {"lpvit": dict(method="lpvit", pattern=block, data=calib, loss_fn=F.cross_entropy),
            "block magnitude": dict(method="magnitude", pattern=block),
            "block magnitude, global": dict(method="magnitude", pattern=block, allocation="global"),
            "unstructured magnitude": dict(method="magnitude")}
    rows, kept = [], {}
    base = accuracy(dense, *test_xy)
    rows.append({"part": "A", "seed": seed, "method": "dense", "sparsity": 0.0, "acc": base})
    for s in args.sparsities:
        for label, kw in runs.items():
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            report = pk.prune_(model, sparsity=s, progress=False, **kw)
            rows.append({"part": "A", "seed": seed, "method": label, "sparsity": s, "achieved": report.sparsity,
                         "acc": accuracy(model, *test_xy), "prune_s": time.perf_counter() - t0,
                         "notes": list(report.notes)})
            kept[(label, s)] = masks_of(model)
            print(f"  A seed {seed} {label:24s} s={s}: acc {rows[-1]['acc']:.4f} (dense {base:.4f})", flush=True)
    return rows, kept


def part_b(dense: nn.Module, test_xy, args, seed: int) -> list[dict]:
    """DIMAP vs global magnitude (and the uniform / per-layer ablations) on the Swin."""
    runs = {"dimap": dict(method="dimap"), "global magnitude": dict(method="magnitude", allocation="global"),
            "uniform magnitude": dict(method="magnitude"), "dimap, one module per layer (LAMP)":
            dict(method="dimap", modules="layer")}
    base = accuracy(dense, *test_xy)
    rows = [{"part": "B", "seed": seed, "method": "dense", "sparsity": 0.0, "acc": base}]
    for s in args.swin_sparsities:
        for label, kw in runs.items():
            model = copy.deepcopy(dense)
            report = pk.prune_(model, sparsity=s, progress=False, **kw)
            per_module: dict[str, list[int]] = {}
            for name, m in masks_of(model).items():
                k = per_module.setdefault(module_of(name), [0, 0])
                k[0] += int((~m).sum())
                k[1] += m.numel()
            rows.append({"part": "B", "seed": seed, "method": label, "sparsity": s, "achieved": report.sparsity,
                         "acc": accuracy(model, *test_xy),
                         "module_sparsity": {k: v[0] / v[1] for k, v in sorted(per_module.items())}})
            print(f"  B seed {seed} {label:36s} s={s}: acc {rows[-1]['acc']:.4f} (dense {base:.4f})", flush=True)
    return rows


def _timed_layers(shapes: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: int, block: int, budget: float) -> list[dict]:
    """Dense vs BSR (block mask) vs CSR (unstructured mask) products x @ Wᵀ for each named (block-masked W,
    unstructured-masked W), ``rows`` input rows, one thread."""
    out = []
    g = torch.Generator().manual_seed(0)
    for name, (wb, wu) in shapes.items():
        x = torch.randn(rows, wb.shape[1], generator=g)
        bsr = wb.to_sparse_bsr((block, block))
        csr = wu.to_sparse_csr()
        fns = {"dense": lambda: F.linear(x, wb), "BSR (block mask)": lambda: torch.sparse.mm(bsr, x.t()),
               "CSR (unstructured mask)": lambda: torch.sparse.mm(csr, x.t())}
        ref = F.linear(x, wb)
        # the same products in other summation orders: float32 rounding over K = in_features terms
        assert torch.allclose(fns["BSR (block mask)"]().t(), ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
        cmp = time_interleaved(fns, warmup=2, min_rounds=10, max_rounds=200, budget_s=budget, threads=1)
        base = cmp.timings["dense"]
        rec = {"layer": name, "shape": list(wb.shape), "rows": rows,
               "block_sparsity": 1 - float((wb != 0).float().mean()),
               "unstructured_sparsity": 1 - float((wu != 0).float().mean())}
        for k in fns:
            t = cmp.timings[k]
            rec[k] = {"median_ms": t.median_ms, "cpu_ms": t.cpu_median_ms, "noisy": t.noisy,
                      "speedup_vs_dense": cmp.ratio("dense", k).median if k != "dense" else 1.0,
                      "why": ", ".join(t.reasons())}
        out.append(rec)
        print(f"  time {name} {tuple(wb.shape)}: dense {base.median_ms:.3f} ms, BSR x{rec['BSR (block mask)']['speedup_vs_dense']:.2f}, "
              f"CSR x{rec['CSR (unstructured mask)']['speedup_vs_dense']:.2f}", flush=True)
    return out


def timing(dense: nn.Module, kept: dict, args) -> list[dict]:
    """CPU time of the seed-0 ViT's pruned layers (LPViT's blocks vs unstructured magnitude), and of a DeiT-S layer."""
    s = args.time_sparsity
    lp, un = kept[("lpvit", s)], kept[("unstructured magnitude", s)]
    weights = dict(dense.named_parameters())
    shapes = {n: (weights[n + ".weight"].detach() * lp[n], weights[n + ".weight"].detach() * un[n])
              for n in lp if n.startswith("blocks.0.")}
    rows = _timed_layers(shapes, 64 * 50, args.block, args.time_budget)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1536, 384, generator=g)
    for b in (args.block, 16):
        keep = (torch.rand(1536 // b, 384 // b, generator=g) >= s).repeat_interleave(b, 0).repeat_interleave(b, 1)
        unstructured = torch.rand(1536, 384, generator=g) >= s
        rows += [dict(r, block=b) for r in _timed_layers({f"DeiT-S fc1, {b}×{b} blocks": (w * keep, w * unstructured)},
                                                         197, b, args.time_budget)]
    return rows


def deit_sweep(args) -> list[dict]:
    """A DeiT-S-sized fc1 (1536×384, 197 tokens) with random block masks at --deit-sparsities and --deit-blocks:
    where, if anywhere, does block sparsity beat the dense product on this CPU?"""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1536, 384, generator=g)
    rows = []
    for b in args.deit_blocks:
        for s in args.deit_sparsities:
            keep = (torch.rand(1536 // b, 384 // b, generator=g) >= s).repeat_interleave(b, 0).repeat_interleave(b, 1)
            unstructured = torch.rand(1536, 384, generator=g) >= s
            rows += [dict(r, block=b, sparsity=s) for r in _timed_layers(
                {f"DeiT-S fc1, {b}×{b} blocks, {s:.0%}": (w * keep, w * unstructured)}, 197, b, args.time_budget)]
    return rows


def run_seed(args, seed: int, train_xy, test_xy) -> list[dict]:
    torch.manual_seed(seed)
    rows: list[dict] = []
    if "A" in args.parts:
        vit, rec = trained("vit", lambda: build_vit(args.vit_dim, args.vit_depth), args, *train_xy, seed)
        rows.append({"part": "train", "model": "vit", "seed": seed, **rec})
        a_rows, kept = part_a(vit, train_xy, test_xy, args, seed)
        rows += a_rows
        if seed == args.seeds[0] and args.time_budget > 0:
            rows.append({"part": "time", "seed": seed, "sparsity": args.time_sparsity, "layers": timing(vit, kept, args)})
    if "B" in args.parts:
        swin, rec = trained("swin", lambda: build_swin(args.swin_dim), args, *train_xy, seed)
        rows.append({"part": "train", "model": "swin", "seed": seed, **rec})
        rows += part_b(swin, test_xy, args, seed)
    return rows


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def tables(rows: list[dict]) -> str:
    out = []
    for part, title in (("A", "A. ViT: LPViT vs block / unstructured magnitude (test accuracy %, no fine-tuning)"),
                        ("B", "B. Swin: module-aware (DIMAP) vs global magnitude (test accuracy %, no fine-tuning)")):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        seeds = sorted({r["seed"] for r in sel})
        sps = sorted({r["sparsity"] for r in sel if r["sparsity"] > 0})
        methods = list(dict.fromkeys(r["method"] for r in sel if r["method"] != "dense"))
        out += [f"### {title}, seeds {seeds}", "", "| method | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
                "|---|" + "---|" * len(sps)]
        dense = [r["acc"] for r in sel if r["method"] == "dense"]
        out.append("| dense | " + " | ".join(_ms(dense) for _ in sps) + " |")
        for m in methods:
            cells = [_ms([r["acc"] for r in sel if r["method"] == m and r["sparsity"] == s]) for s in sps]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        wins = []
        pair = ("lpvit", "block magnitude") if part == "A" else ("dimap", "global magnitude")
        for s in sps:
            diff = [a["acc"] - b["acc"] for a in sel for b in sel if a["seed"] == b["seed"] and a["sparsity"] == s
                    == b["sparsity"] and a["method"] == pair[0] and b["method"] == pair[1]]
            wins.append(f"{s:.0%}: {pair[0]} − {pair[1]} = {_ms(diff)} points, better on {sum(d > 0 for d in diff)}/{len(diff)} seeds")
        out += ["", "; ".join(wins), ""]
    for r in rows:
        if r["part"] != "time":
            continue
        head = ("a DeiT-S layer with random masks" if r["seed"] < 0 else
                f"the pruned layers (seed {r['seed']}, {r['sparsity']:.0%})")
        out += [f"### Time of {head}, one thread; speed-up over dense by median process CPU time (a loaded machine stretches wall time: the wall ratio, median of paired rounds, in brackets)",
                "", "| layer | shape | rows | dense CPU ms | BSR (block), CPU time (wall) | CSR (unstructured), CPU time (wall) |",
                "|---|---|---|---|---|---|"]
        for t in r["layers"]:
            d = t["dense"]

            def cell(v: dict) -> str:  # speed-up over dense by process CPU time (the wall-clock ratio in brackets)
                return (f"×{d['cpu_ms'] / v['cpu_ms']:.2f} (×{v['speedup_vs_dense']:.2f})"
                        + (" noisy" if v["noisy"] else ""))
            out.append(f"| {t['layer']} | {t['shape'][0]}×{t['shape'][1]} | {t['rows']} | {d['cpu_ms']:.3f} | "
                       f"{cell(t['BSR (block mask)'])} | {cell(t['CSR (unstructured mask)'])} |")
        out.append("")
    return "\n".join(out)


# The results store: the shape of every row this script writes (by "part"), and the claims it tests.
MODEL = "timm ViT / Swin (tiny) on Fashion-MNIST"
SHAPES = {"train": {"seed"}, "A": {"seed", "method", "sparsity", "acc"}, "B": {"seed", "method", "sparsity", "acc"},
          "time": {"seed", "sparsity", "layers"}}
LPVIT = "LPViT: Low-Power Semi-structured Pruning for Vision Transformers"
DIMAP = "Data-independent Module-aware Pruning for Hierarchical Vision Transformers"
CLAIMS = {
    "accuracy": "block-structured pruning with LPViT's second-order (Fisher) block score and its MAC-budget allocation "
                "keeps a ViT's accuracy better than block magnitude pruning at equal sparsity (no fine-tuning)",
    "speed": "block-sparse weights make the pruned layers' products faster than the dense ones "
             "(torch BSR vs dense F.linear, process CPU time; CSR of an unstructured mask beside)",
    "dimap": "comparing weights within per-stage modules by their share of the module's distortion prunes a Swin "
             "with less accuracy loss than global magnitude at equal sparsity (no data, no fine-tuning)"}


def _accuracy_rows(rows: list[dict], part: str) -> list[Measured]:
    """A part's accuracy rows, the dense model's repeated under every sparsity (the table's columns)."""
    sel = [r for r in rows if r["part"] == part]
    sps = sorted({r["sparsity"] for r in sel if r["sparsity"] > 0})
    out = []
    for r in sel:
        for s in sps if r["method"] == "dense" else [r["sparsity"]]:
            out.append(Measured(r["method"], f"{s:.0%}", r["seed"], {"acc": r["acc"]}))
    return out


def _speed_rows(rows: list[dict]) -> list[Measured]:
    """Each timed layer's speed-up over dense F.linear by process CPU time (the wall ratio stored beside)."""
    out = []
    for r in rows:
        if r["part"] != "time":
            continue
        for t in r["layers"]:
            setting = t["layer"] if "%" in t["layer"] else f"{t['layer']}, {r['sparsity']:.0%}"
            seed = r["seed"] if r["seed"] >= 0 else None
            for arm, key in (("dense F.linear", "dense"), ("BSR (block mask)", "BSR (block mask)"),
                             ("CSR (unstructured mask)", "CSR (unstructured mask)")):
                out.append(Measured(arm, setting, seed, {"cpu_speedup": t["dense"]["cpu_ms"] / t[key]["cpu_ms"],
                                                         "wall_speedup": t[key]["speedup_vs_dense"]}))
    return out


def paper_results(rows: list[dict]) -> list[PaperResult]:
    """LPViT's accuracy (part A) and speed (the timing rows), DIMAP's accuracy (part B), each where the rows hold it."""
    out = []
    budget = budget_of(rows)
    if any(r["part"] == "A" for r in rows):
        m = _accuracy_rows(rows, "A")
        verdict, why = compare(m, "acc", "lpvit", ["block magnitude"])
        out.append(PaperResult(LPVIT, CLAIMS["accuracy"], verdict, why, ("acc",), m, budget, "accuracy", ("acc",)))
    if any(r["part"] == "time" for r in rows):
        m = _speed_rows(rows)
        verdict, why = compare(m, "cpu_speedup", "BSR (block mask)", ["dense F.linear"], percent=False)
        test = "speed" if any(r.seed is not None for r in m) else "speed, DeiT-S layer sweep (one measurement each)"
        out.append(PaperResult(LPVIT, CLAIMS["speed"], verdict, why, ("cpu_speedup",), m, budget, test))
    if any(r["part"] == "B" for r in rows):
        m = _accuracy_rows(rows, "B")
        verdict, why = compare(m, "acc", "dimap", ["global magnitude"])
        out.append(PaperResult(DIMAP, CLAIMS["dimap"], verdict, why, ("acc",), m, budget, "", ("acc",)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", default="AB", help="A (the ViT, LPViT), B (the Swin, DIMAP) or both")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vit-dim", type=int, default=64)
    p.add_argument("--vit-depth", type=int, default=4)
    p.add_argument("--swin-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--swin-sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8])
    p.add_argument("--time-sparsity", type=float, default=0.5)
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds per timed layer; 0 skips the timing")
    p.add_argument("--deit-sweep", action="store_true", help="only time a DeiT-S layer at --deit-sparsities × --deit-blocks")
    p.add_argument("--deit-sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--deit-blocks", type=int, nargs="+", default=[4, 16, 32])
    p.add_argument("--cache", type=Path, default=Path("/tmp/prunekit_papers_vit"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/papers_vit.jsonl"))
    p.add_argument("--table", action="store_true", help="only print the tables of --out")
    p.add_argument("--db", default=None, help="also store the rows of --out, with each claim's verdict, in this "
                                              "results store")
    args = p.parse_args()
    if args.table:
        print(tables([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]))
        _store(args)
        return
    if args.deit_sweep:
        torch.set_num_threads(args.threads)
        row = {"part": "time", "seed": -1, "sparsity": -1, "layers": deit_sweep(args)}
        with args.out.open("a") as f:
            f.write(json.dumps({**row, "config": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()}}) + "\n")
        print(tables([row]))
        _store(args)
        return
    if args.time_budget > 0 and args.time_sparsity not in args.sparsities:
        p.error(f"--time-sparsity {args.time_sparsity} must be one of --sparsities {args.sparsities}")
    torch.set_num_threads(args.threads)
    train_set = load_fashion_mnist("train", limit=args.train_size)
    test_set = load_fashion_mnist("test", limit=args.test_size)
    rows: list[dict] = []
    for seed in args.seeds:
        rows += run_seed(args, seed, train_set.tensors, test_set.tensors)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:  # one line per row, appended per seed: a killed run keeps its seeds
            for r in rows:
                if r["seed"] == seed:
                    f.write(json.dumps({**r, "config": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()}}) + "\n")
    print(tables(rows))
    _store(args)


def _store(args) -> None:
    store_papers_or_exit(args.db, "papers_vit", MODEL, [args.out], SHAPES, "part", paper_results)


if __name__ == "__main__":
    main()
