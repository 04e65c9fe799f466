"""Train prunekit's own class-conditional DDPM on Fashion-MNIST (CPU) and cache it with a protocol card.

    python benchmarks/diffusion_train.py --minutes 58          # 3,893 steps on one idle CPU thread (measured)
    python benchmarks/diffusion_train.py --minutes 2 --out /tmp/ddpm-smoke

The model goes to ~/.cache/prunekit/diffusion/<name>/ (a ``save_unet`` folder); ``card.json`` beside it
records the UNet config, the training config, the steps that ran, the wall time, the loss curve, the data
(hash of the training images) and the weights' sha256. Diff-Pruning's fine-tune cost is a fraction of
this training cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from prunekit.bench.protocol import machine, tensor_hash, versions
from prunekit.diffusion import TrainConfig, UNetConfig, build_unet, count_params, fashion_mnist, save_unet, train_ddpm_
from prunekit.diffusion import load_unet
from prunekit.diffusion.ddpm import read_unet_meta, sha256_file
from prunekit.infra.atomic import atomic_file

CACHE = Path.home() / ".cache" / "prunekit" / "diffusion"
# The shared 2-core machine runs ~15 ms per image per forward for this 0.69 M-parameter UNet: a few-million
# parameter one would see 4x fewer images in the hour. The width is stated in the card and README.
MODEL = UNetConfig(block_out_channels=(16, 32, 64), layers_per_block=1, attention=True, attention_head_dim=8,
                   norm_num_groups=8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=55.0, help="wall-clock budget of the training loop")
    ap.add_argument("--steps", type=int, default=3000, help="at most this many steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", type=Path, default=None, help="continue from this saved model (its card is kept)")
    ap.add_argument("--out", type=Path, default=CACHE / "ddpm-fmnist-v3")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = fashion_mnist("train")
    unet = build_unet(MODEL, seed=args.seed) if args.init is None else load_unet(args.init)
    before = read_unet_meta(args.init).get("card") if args.init is not None else None
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema,
                      warmup_steps=100, max_seconds=args.minutes * 60, seed=args.seed)
    print(f"training {count_params(unet):,} parameters for at most {args.steps} steps / {args.minutes} min",
          flush=True)
    report = train_ddpm_(unet, x, y, cfg, progress=sys.stderr.isatty())
    print(report, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    card = {"what": "prunekit class-conditional DDPM on Fashion-MNIST (32x32, [-1,1])",
            "unet": MODEL.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
            "train_report": report.to_dict(), "params": count_params(unet),
            "data": {"split": "train", "n": int(x.shape[0]), "images_hash": tensor_hash(x),
                     "labels_hash": tensor_hash(y)},
            "continued_from": before, "total_seconds": report.seconds + (before or {}).get("total_seconds", (before or {}).get("train_report", {}).get("seconds", 0)),
            "total_images_seen": report.images_seen + (before or {}).get("total_images_seen", (before or {}).get("train_report", {}).get("images_seen", 0)),
            "threads": args.threads, "machine": machine(args.threads), "versions": versions(),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_unet(unet, args.out, overwrite=args.overwrite, meta={"card": card})
    card["weights_sha256"] = sha256_file(args.out / "model.safetensors")
    card["folder"] = str(args.out)
    with atomic_file(args.out.parent / f"{args.out.name}.card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
    print(f"saved {args.out} (sha256 {card['weights_sha256'][:16]}…)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
