"""ISS-P ("Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution") on Fashion-MNIST ×2
super-resolution: sparse networks trained from scratch, soft shrinkage against hard pruning, at equal sparsity and
equal training.

Per seed and sparsity, TinySR (prunekit.apps.superres: EDSR-style, --channels, --blocks residual blocks, learning
the residual over bicubic) is trained from the same random initialisation on the same minibatches for --epochs
(Adam, L1, cosine learning rate) on --train images box-downscaled by 2 (28×28 from 14×14):

  dense   no pruning;
  GMP     gradual magnitude pruning (prunekit.train.Gradual, cubic schedule, masks updated --gmp-events times):
          a pruned weight never comes back;
  IHT     iterative hard thresholding: the final sparsity from step 1, the smallest weights of each layer zeroed
          after every optimizer step (SoftShrink(shrink=1, schedule="constant")): zeroed weights get gradients and
          may come back (the paper's baseline);
  ISS-P   the same, the smallest weights multiplied by 1 − --shrink instead of zeroed (SoftShrink(shrink=…,
          schedule="constant")): the paper's method;
  IHT cubic, ISS-P cubic   the same two on GMP's cubic schedule (the sparsity rising from 0), which separates the
          shrinkage from the schedule (``--arms "IHT cubic" "ISS-P cubic" --name apps_superres_cubic``).

Each pruned arm is pruned for real (masks) after --prune-share of the steps and trains on with its masks to the
end. PSNR on --test held-out images, beside the bicubic upscale's. Claim: ISS-P beats IHT and GMP (higher PSNR) at
every sparsity, paired over seeds, held above twice the standard error.

    nice -n 10 python benchmarks/apps_superres.py --epochs 12 --seeds 0 1 2 3 4   # the README's run
"""

from __future__ import annotations

import argparse
import time

import torch

from _apps_common import fmt, spread, write_results
from prunekit.apps.superres import TinySR, bicubic, sr_pairs, sr_psnr, train_sr_
from prunekit.apps.batches import steps_of
from prunekit.datasets import load_fashion_mnist
from prunekit.metrics.image import psnr
from prunekit.train import Gradual, SoftShrink

ARMS = ("dense", "GMP", "IHT", "ISS-P", "IHT cubic", "ISS-P cubic")


def pruner(arm: str, model: TinySR, sparsity: float, end_step: int, args):
    if arm == "GMP":
        return Gradual(model, sparsity, start_step=0, end_step=end_step, every=max(1, end_step // args.gmp_events))
    method, _, schedule = arm.partition(" ")
    shrink = 1.0 if method == "IHT" else args.shrink
    return SoftShrink(model, sparsity, start_step=0, end_step=end_step, every=1, shrink=shrink,
                      schedule=schedule or "constant")


def zero_share(model: TinySR, names: set[str]) -> float:
    """The fraction of zero weights over the pruner's targets (the masked weights read as zeros)."""
    ws = [m.weight.detach() for n, m in model.named_modules() if n in names]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--epochs", type=float, default=12.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--prune-share", type=float, default=0.5, help="the share of the steps before the hard prune")
    p.add_argument("--shrink", type=float, default=0.1, help="ISS-P: the fraction taken off an unimportant weight")
    p.add_argument("--gmp-events", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["dense", "GMP", "IHT", "ISS-P"])
    p.add_argument("--name", default="apps_superres", help="results/<name>.json (apps_papers.py names the claims)")
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lr_train, hr_train = sr_pairs(load_fashion_mnist("train", limit=args.train, normalize=False).tensors[0], 2)
    lr_test, hr_test = sr_pairs(load_fashion_mnist("test", limit=args.test, normalize=False).tensors[0], 2)
    psnr_bicubic = psnr(bicubic(lr_test, 2), hr_test)
    end_step = round(args.prune_share * steps_of(args.train, args.batch_size, args.epochs))
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        init = TinySR(args.channels, args.blocks, 2).state_dict()
        plan = [("dense", 0.0)] if "dense" in args.arms else []
        for arm, sparsity in plan + [(a, s) for s in args.sparsities for a in args.arms if a != "dense"]:
            model = TinySR(args.channels, args.blocks, 2)
            model.load_state_dict(init)
            sched = None if arm == "dense" else pruner(arm, model, sparsity, end_step, args)
            t0 = time.perf_counter()
            losses = train_sr_(model, lr_train, hr_train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               seed=seed, after_step=None if sched is None else sched.step)
            names = {t.name for t in sched.targets} if sched is not None else set()
            figs = {"psnr": sr_psnr(model, lr_test, hr_test), "psnr_bicubic": psnr_bicubic,
                    "sparsity": zero_share(model, names) if names else 0.0, "final_loss": sum(losses[-20:]) / 20,
                    "seconds": time.perf_counter() - t0}
            label = "dense" if arm == "dense" else f"{arm} @ sparsity={sparsity:.2f}"
            runs.append({"label": label, "seed": seed, "figures": figs})
            _save(args, runs, end_step)
            print(f"seed {seed} {label}: PSNR {figs['psnr']:.2f} dB (bicubic {psnr_bicubic:.2f}), sparsity "
                  f"{figs['sparsity']:.3f}, {figs['seconds']:.0f} s", flush=True)
    summary = _save(args, runs, end_step, db=args.db)
    for k, v in summary.items():
        print(f"{k}: {fmt(v, 2)} dB")
    return summary


def _save(args, runs: list[dict], end_step: int, db: str | None = None) -> dict:
    """Write what the runs so far gave (a run cut short still leaves its results); PSNR per label."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    summary = {lab: spread(r["figures"]["psnr"] for r in runs if r["label"] == lab) for lab in labels}
    settings = {k: v for k, v in vars(args).items() if k not in ("db", "name")}
    settings |= {"scale": 2, "hard_prune_step": end_step, "steps": steps_of(args.train, args.batch_size, args.epochs)}
    write_results(args.name, {"task": "fashion-mnist ×2 super-resolution, sparse from scratch",
                              "model": f"TinySR({args.channels}, {args.blocks})", "settings": settings,
                              "runs": runs, "summary": summary}, db=db)
    return summary


if __name__ == "__main__":
    main()
