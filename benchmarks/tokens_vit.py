"""Token merging and attention pruning on a small ViT trained here on Fashion-MNIST (CPU).

A timm ``VisionTransformer`` (28×28 grey images, 2×2 patches: 196 patches + a class token = 197
tokens, as many as ViT-B/16 at 224 px) is trained from scratch for ``--steps`` steps (cached under
``--checkpoint``), then evaluated on the first ``--test-limit`` test images without any fine-tuning:

- ToMe (``prunekit.tokens.merge_``) at r = 4, 8, 16;
- attention-ranked pruning (``prune_``: Zero-TPrune's Weighted PageRank, the mean-attention baseline,
  EViT's class-token attention and a random floor) at keep = 0.7 and 0.5 at the default layers (1/4, 1/2, 3/4 of the depth);
- ToMe's own code (facebookresearch/ToMe, ``tome.patch.timm``) at the same r, when ``--tome-src``
  points at a checkout (it is CC-BY-NC and not on PyPI, so it is not a dependency).

Throughput: images/s at batch ``--batch`` by wall clock and by process CPU time, from
``prunekit.infra.latency.time_interleaved`` (every configuration, a patched copy of the model, run in
turn in each round in one process; median, IQR spread, paired speed-up over the full model per
round, noisy flag), for at most ``--time-budget`` seconds.

    python benchmarks/tokens_vit.py --steps 400 --tome-src /path/to/ToMe
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import types
from pathlib import Path

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tokens_timing import conditions, markdown_table, speedup_cell, spread_cell, timed  # noqa: E402

import prunekit.tokens as pt  # noqa: E402
from prunekit.datasets import load_fashion_mnist  # noqa: E402


def build(dim: int, depth: int, heads: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=dim, depth=depth,
                             num_heads=heads, mlp_ratio=2.0, drop_path_rate=0.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and horizontal flips."""
    b = x.shape[0]
    padded = nn.functional.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    out = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def train(model: nn.Module, steps: int, batch: int, lr: float, seed: int) -> dict:
    data = load_fashion_mnist("train")
    x, y = data.tensors
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    w0, c0 = time.perf_counter(), time.process_time()
    perm = torch.randperm(len(x), generator=gen)
    for step in range(steps):
        idx = perm[(step * batch) % len(x):(step * batch) % len(x) + batch]
        if len(idx) < batch:
            perm = torch.randperm(len(x), generator=gen)
            idx = perm[:batch]
        loss = nn.functional.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - w0:.0f} s", flush=True)
    model.eval()
    return {"steps": steps, "batch": batch, "images_seen": steps * batch, "lr": lr, "seed": seed,
            "train_wall_s": time.perf_counter() - w0, "train_cpu_s": time.process_time() - c0}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def relative_macs(tokens: list[int], dim: int, mlp_ratio: float, prune_layers: set[int]) -> float:
    """Multiply-accumulates of the blocks relative to the full model, from the tokens entering each
    block and leaving it (attention and projections at the entering count, the MLP at the leaving
    count; a pruning layer pays one more N×N map)."""
    def block(n_in: int, n_out: int, extra: bool) -> float:
        attn = 4 * dim * dim * n_in + 2 * n_in * n_in * dim + (n_in * n_in * dim if extra else 0)
        return attn + 2 * mlp_ratio * dim * dim * n_out

    full = sum(block(tokens[0], tokens[0], False) for _ in tokens[:-1])
    return sum(block(tokens[i], tokens[i + 1], i in prune_layers) for i in range(len(tokens) - 1)) / full


def load_tome(src: str | None):
    if not src:
        return None, "not run (pass --tome-src with a checkout of facebookresearch/ToMe)"
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        import tome  # type: ignore
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, not hidden
        return None, f"ToMe did not import: {type(exc).__name__}: {exc}"
    return tome, "facebookresearch/ToMe (tome.patch.timm)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "prunekit-bench", "vit_fmnist.pt"))
    p.add_argument("--test-limit", type=int, default=5000)
    p.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurement")
    p.add_argument("--time-budget", type=float, default=90.0, help="seconds of interleaved timing (all configurations)")
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--r", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--keep", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--tome-src", default=None, help="folder holding ToMe's 'tome' package (optional)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = build(args.dim, args.depth, args.heads)
    ckpt = Path(args.checkpoint)
    meta_key = {k: getattr(args, k) for k in ("dim", "depth", "heads", "steps", "train_batch", "lr", "seed")}
    train_info = None
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu")
        if saved.get("meta") == meta_key:
            model.load_state_dict(saved["state"])
            train_info = saved["train"]
            print(f"loaded the trained ViT from {ckpt}")
    if train_info is None:
        print(f"training the ViT ({args.steps} steps of {args.train_batch})", flush=True)
        train_info = train(model, args.steps, args.train_batch, args.lr, args.seed)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"meta": meta_key, "state": model.state_dict(), "train": train_info}, ckpt)
    model.eval()

    test = load_fashion_mnist("test", limit=args.test_limit)
    xt, yt = test.tensors
    tome, tome_status = load_tome(args.tome_src)

    # configurations: name -> (patch function on `model`, or a separate model for ToMe's own code)
    configs: dict[str, dict] = {"full": {"kind": "full"}}
    for r in args.r:
        configs[f"ToMe r={r}"] = {"kind": "tome", "r": r}
    for keep in args.keep:
        for method in ("attention", "mean-attention", "cls-attention", "random"):
            configs[f"{method} keep={keep}"] = {"kind": "prune", "method": method, "keep": keep}
    if tome is not None:
        theirs = copy.deepcopy(model)
        tome.patch.timm(theirs)
        for r in args.r:
            configs[f"ToMe (official) r={r}"] = {"kind": "official", "r": r}

    # one model per configuration (a patched copy), so that timing calls only forwards
    nets: dict[str, nn.Module] = {}
    for name, cfg in configs.items():
        if cfg["kind"] == "full":
            nets[name] = model
        elif cfg["kind"] == "official":
            nets[name] = copy.deepcopy(theirs)
            nets[name].r = cfg["r"]
        else:
            nets[name] = copy.deepcopy(model)
            if cfg["kind"] == "tome":
                pt.merge_(nets[name], r=cfg["r"])
            else:
                pt.prune_(nets[name], keep=cfg["keep"], method=cfg["method"])
        nets[name].eval()

    print(f"evaluating {len(configs)} configurations on {len(xt)} test images", flush=True)
    results: dict[str, dict] = {}
    base_pred = None
    for name, cfg in configs.items():
        net = nets[name]
        report = pt.report_of(net) if cfg["kind"] in ("tome", "prune") else None
        w0 = time.perf_counter()
        pred = predict(net, xt)
        if base_pred is None:
            base_pred = pred
        tokens = report.tokens_per_layer + [report.output_tokens] if report else None
        prune_layers = set()
        if cfg["kind"] == "prune":
            prune_layers = {i for i in range(len(tokens) - 1) if tokens[i + 1] < tokens[i]}
        results[name] = {"accuracy": (pred == yt).float().mean().item(),
                         "agreement_with_full": (pred == base_pred).float().mean().item(),
                         "tokens": tokens, "eval_s": time.perf_counter() - w0,
                         "relative_macs": relative_macs(tokens, args.dim, 2.0, prune_layers) if tokens else None}
        print(f"  {name:28s} acc {results[name]['accuracy']:.4f}", flush=True)
    # official ToMe removes the same tokens per layer as ours at equal r
    for name, cfg in configs.items():
        if cfg["kind"] == "official":
            results[name]["tokens"] = results[f"ToMe r={cfg['r']}"]["tokens"]
            results[name]["relative_macs"] = results[f"ToMe r={cfg['r']}"]["relative_macs"]

    xb = xt[:args.batch]

    def fwd(net: nn.Module):
        def run():
            with torch.inference_mode():
                net(xb)
        return run

    print(f"timing {len(configs)} configurations at batch {args.batch} (interleaved, budget {args.time_budget:.0f} s)",
          flush=True)
    timing, cmp = timed({n: fwd(nets[n]) for n in configs}, args.batch, baseline="full", budget_s=args.time_budget,
                        max_rounds=args.max_rounds, threads=args.threads)
    for name in results:
        results[name].update(timing[name])

    full = results["full"]["accuracy"]
    rows = []
    for name, r in results.items():
        rows.append([name, f"{100 * r['accuracy']:.2f}", f"{100 * (r['accuracy'] - full):+.2f}",
                     f"{100 * r['agreement_with_full']:.1f}", r["tokens"][-1] if r["tokens"] else 197,
                     f"{r['relative_macs']:.2f}" if r["relative_macs"] else "1.00",
                     f"{r['items_per_s_wall']:.0f}", f"{r['items_per_s_cpu']:.0f}", spread_cell(r), speedup_cell(r)])
    table = markdown_table(["configuration", "accuracy %", "Δ pts", "same prediction as full %", "tokens out",
                            "MACs vs full", "img/s wall", "img/s CPU", "wall spread (flag)", "speed-up (paired)"], rows)
    print()
    print(f"ViT dim {args.dim}, depth {args.depth}, {args.heads} heads, 197 tokens; trained {train_info['steps']} steps × "
          f"{train_info['batch']} ({train_info['images_seen']:,} images, {train_info['train_wall_s'] / 60:.1f} min wall, "
          f"{train_info['train_cpu_s'] / 60:.1f} min CPU), seed {args.seed}; {len(xt)} test images; timed batch {args.batch}; "
          f"ToMe official: {tome_status}")
    print(f"timing: {conditions(cmp)}")
    print(table)
    out = {"args": vars(args), "train": train_info, "tome_official": tome_status, "results": results,
           "timing": cmp.to_dict(), "table": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
