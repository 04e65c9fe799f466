"""Adaptive window pruning in a Swin-style restoration network on locally blurred Fashion-MNIST
("Adaptive Window Pruning for Efficient Local Motion Deblurring").

Each image is blurred (horizontal motion blur of ``--length`` pixels) inside one random rectangle of
8–14 pixels a side; the 28×28 image is cut into 7×7 windows (16 per image). WindowRestorer (dim 16, two
window-attention blocks) is trained ``--epochs`` on ``--train`` images with an L1 loss, its window
predictor beside it; then PSNR on ``--test`` held-out images: blurred input, every window processed,
only the windows predicted blurry processed (the others pass through), and the ground-truth blurry windows
only (the best a predictor could do). MACs per image counted by prunekit.metrics.macs.
Claim tested: pruning the windows predicted sharp keeps PSNR close to processing every window at a
fraction of the MACs.

    python benchmarks/apps_windows.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import torch

from _apps_common import fmt, spread, write_results
from prunekit.apps.windows import WindowRestorer, evaluate, local_blur_set, psnr, train_restorer_, window_labels
from prunekit.datasets import load_fashion_mnist


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--length", type=int, default=5)
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x = load_fashion_mnist("train", limit=args.train, normalize=False).tensors[0]
    xt = load_fashion_mnist("test", limit=args.test, normalize=False).tensors[0]
    runs = []
    for seed in args.seeds:
        b, s, m = local_blur_set(x, length=args.length, size=(8, 14), seed=seed)
        bt, st, mt = local_blur_set(xt, length=args.length, size=(8, 14), seed=seed + 100)
        torch.manual_seed(seed)
        model = WindowRestorer(dim=16, window=7, depth=2, heads=2)
        t0 = time.perf_counter()
        train_restorer_(model, b, s, m, epochs=args.epochs, lr=args.lr, batch_size=16, seed=seed)
        f = evaluate(model, bt, st, mt)
        with torch.no_grad():
            oracle = psnr(model(bt, keep=window_labels(mt, 7)), st)
        figs = {**f.to_dict(), "psnr_oracle_windows": oracle, "blurry_windows": float(window_labels(mt, 7).float().mean())}
        runs.append({"label": "WindowRestorer", "seed": seed, "figures": figs, "seconds": time.perf_counter() - t0})
        _save(args, runs)
        print(f"seed {seed}: PSNR blurred {f.psnr_blurred:.2f}, full {f.psnr_full:.2f}, pruned {f.psnr_pruned:.2f}, "
              f"oracle {oracle:.2f} dB; kept {f.kept:.3f} of windows (blurry {figs['blurry_windows']:.3f}), "
              f"predictor acc {f.predictor_accuracy:.3f}; MACs {f.macs_full / 1e6:.2f} M → {f.macs_pruned / 1e6:.2f} M",
              flush=True)
    summary = _save(args, runs, db=args.db)
    print({k: fmt(v, 3) for k, v in summary.items()})
    return summary


def _save(args, runs: list[dict], db: str | None = None) -> dict:
    """Write what the seeds so far gave (so a run cut short still leaves its results)."""
    summary = {k: spread(r["figures"][k] for r in runs) for k in runs[0]["figures"]}
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "seeds")} | {"dim": 16, "window": 7, "depth": 2}
    write_results("apps_windows", {"task": "fashion-mnist local deblurring", "model": "WindowRestorer(16, 7, 2)",
                                   "settings": settings, "runs": runs, "summary": summary}, db=db)
    return summary


if __name__ == "__main__":
    main()
