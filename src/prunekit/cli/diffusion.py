"""``prunekit diffusion``: the class-conditional DDPM trained here on Fashion-MNIST — train it, prune its UNet
(Diff-Pruning or magnitude/random channels to a MACs target, optionally fine-tuned), sample image grids, and
measure FID-FMNIST / KID / precision-recall (each with its noise floor), MACs per step and sampling time.

    prunekit diffusion train --out ddpm --minutes 50
    prunekit diffusion prune --model ddpm --macs 0.5 --finetune-steps 200 --out ddpm-half
    prunekit diffusion sample --model ddpm-half --out grid.png
    prunekit diffusion eval --model ddpm --model ddpm-half --n 1000 --steps 20 --time

FID-FMNIST uses the penultimate features of a Fashion-MNIST classifier trained here (cached on first use),
not Inception's: compare its numbers with each other, not with papers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from . import diffusion_more
from .common import add_common, emit, is_quiet, say


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("diffusion", help="train, prune, sample and evaluate the Fashion-MNIST DDPM",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="{train,prune,sample,eval,ecodiff,aptp,forget}", required=True)

    t = verbs.add_parser("train", help="train a class-conditional DDPM on Fashion-MNIST and save it")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--channels", default="16,32,64", help="UNet block_out_channels (default 16,32,64)")
    t.add_argument("--layers-per-block", type=int, default=1)
    t.add_argument("--no-attention", action="store_true", help="no self-attention blocks")
    t.add_argument("--norm-groups", type=int, default=8, help="GroupNorm groups (default 8)")
    t.add_argument("--steps", type=int, default=2000, help="at most this many steps (default 2000)")
    t.add_argument("--minutes", type=float, default=None, help="stop at this wall-clock budget")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ema", type=float, default=0.995, help="EMA decay of the weights (0: none)")
    t.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    t.add_argument("--seed", type=int, default=0)
    _out_flags(t)

    r = verbs.add_parser("prune", help="remove UNet channels to a MACs target, optionally fine-tune, save")
    r.add_argument("--model", required=True, help="a folder written by `prunekit diffusion train` (or prune)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--macs", type=float, default=0.5, help="fraction of the MACs per denoising step to remove")
    r.add_argument("--importance", default="diff-pruning", choices=["diff-pruning", "taylor", "l1", "l2", "random"])
    r.add_argument("--threshold", type=float, default=0.05, help="Diff-Pruning's L_t/L_max threshold (0.05)")
    r.add_argument("--stride", type=int, default=10, help="visit every STRIDE-th timestep for the gradients")
    r.add_argument("--blocks", default=None, help="prune only these blocks: down,mid,up (default: all)")
    r.add_argument("--finetune-steps", type=int, default=0, help="DDPM fine-tune steps after pruning (default 0)")
    r.add_argument("--finetune-lr", type=float, default=5e-4)
    r.add_argument("--batch-size", type=int, default=64, help="fine-tune batch size")
    r.add_argument("--limit", type=int, default=None, help="use the first N training images only")
    r.add_argument("--seed", type=int, default=0)
    _out_flags(r)

    s = verbs.add_parser("sample", help="save a PNG grid of samples, one row per class")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--per-class", type=int, default=8)
    s.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    s.add_argument("--eta", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    _out_flags(s)

    e = verbs.add_parser("eval", help="FID-FMNIST, KID, precision/recall (with noise floors), MACs, sampling time")
    e.add_argument("--model", required=True, action="append", help="a model folder (repeat to compare)")
    e.add_argument("--n", type=int, default=1000, help="samples per model (default 1000, at most 5000)")
    e.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--time", action="store_true", help="also time sampling, paired and interleaved")
    add_common(e)
    diffusion_more.add_verbs(verbs)  # ecodiff, aptp, forget
    p.set_defaults(func=run)


def _out_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace --out if prunekit wrote it")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    if args.verb in diffusion_more.VERBS:
        return diffusion_more.run(args)
    return {"train": _train, "prune": _prune, "sample": _sample, "eval": _eval}[args.verb](args)


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise ValueError(f"--channels must be comma-separated ints such as 16,32,64, got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..diffusion import TrainConfig, UNetConfig, build_unet, count_params, fashion_mnist, save_unet, train_ddpm_
    from ..infra.atomic import check_output_folder

    cfg = UNetConfig.parse(block_out_channels=_channels(args.channels), layers_per_block=args.layers_per_block,
                           attention=not args.no_attention, norm_num_groups=args.norm_groups)
    tcfg = TrainConfig.parse(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema or None,
                             max_seconds=args.minutes * 60 if args.minutes else None, seed=args.seed)
    check_output_folder(args.out, args.overwrite)
    x, y = fashion_mnist("train", limit=args.limit)
    torch.manual_seed(args.seed)
    unet = build_unet(cfg, seed=args.seed)
    say(args, f"training {count_params(unet):,} parameters on {len(x):,} images")
    report = train_ddpm_(unet, x, y, tcfg, progress=not is_quiet(args))
    save_unet(unet, args.out, overwrite=args.overwrite,
              meta={"unet": cfg.model_dump(mode="json"), "train": tcfg.model_dump(mode="json"),
                    "train_report": report.to_dict()})
    emit(args, {"out": str(args.out), "params": count_params(unet), **report.to_dict()}, f"{report}\nsaved {args.out}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..diffusion import TrainConfig, fashion_mnist, load_unet, save_unet, train_ddpm_
    from ..diffusion.ddpm import read_unet_meta
    from ..diffusion.diffpruning import DiffPruningConfig, diff_prune_
    from ..infra.atomic import check_distinct, check_output_folder

    blocks = tuple(b.strip() for b in args.blocks.split(",")) if args.blocks else None
    cfg = DiffPruningConfig.parse(macs_sparsity=args.macs, importance=args.importance, threshold=args.threshold,
                                  timestep_stride=args.stride, blocks=blocks, seed=args.seed)
    if args.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    check_distinct({"--out": args.out}, {"--model": args.model})
    check_output_folder(args.out, args.overwrite)
    unet = load_unet(args.model)
    meta = read_unet_meta(args.model)
    x, y = fashion_mnist("train", limit=args.limit)
    report = diff_prune_(unet, x, y, cfg)
    say(args, str(report))
    record: dict[str, Any] = {"source": str(args.model), "prune": report.to_dict()}
    if args.finetune_steps:
        sched = meta.get("schedule", {})
        tcfg = TrainConfig(steps=args.finetune_steps, batch_size=args.batch_size, lr=args.finetune_lr,
                           ema_decay=0.99, warmup_steps=min(50, args.finetune_steps), seed=args.seed, **sched)
        ft = train_ddpm_(unet, x, y, tcfg, progress=not is_quiet(args))
        record["finetune"] = ft.to_dict()
        trained = (meta.get("train_report") or meta.get("card", {}).get("train_report") or {})
        if trained.get("seconds"):
            record["finetune_cost"] = {"seconds_fraction": ft.seconds / trained["seconds"],
                                       "images_fraction": ft.images_seen / max(trained.get("images_seen", 1), 1)}
        say(args, str(ft))
    save_unet(unet, args.out, overwrite=args.overwrite, meta=record)
    emit(args, {"out": str(args.out), **record}, f"{report}\nsaved {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from ..diffusion import ddim_sample, load_unet
    from ..diffusion.metrics import save_grid

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{out} is not a PNG file; refusing to replace it")
    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    unet = load_unet(args.model)
    ddim_sample(unet, [0], steps=args.steps, eta=args.eta)  # checks the step count against the model first
    import torch

    labels = torch.arange(10).repeat_interleave(args.per_class)
    images = ddim_sample(unet, labels, steps=args.steps, seed=args.seed, eta=args.eta)
    save_grid(images, out)
    emit(args, {"out": str(out), "images": len(labels), "steps": args.steps}, f"saved {out} ({len(labels)} images)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..diffusion import load_unet, schedule_of
    from ..diffusion.metrics import (check_fmnist_unet, load_classifier, real_reference, sample_quality,
                                     sampling_time, unet_cost)

    if not 2 <= args.n <= 5000:
        raise ValueError(f"--n must be in [2, 5000] (the noise floor needs two disjoint halves of the 10,000 test "
                         f"images), got {args.n}")
    unets = {m: load_unet(m) for m in args.model}
    for m, u in unets.items():
        if args.steps > schedule_of(u).num_train_timesteps or args.steps < 1:
            raise ValueError(f"--steps {args.steps} is outside 1..{schedule_of(u).num_train_timesteps}, the "
                             f"timesteps {m} was trained with")
        check_fmnist_unet(u)  # before the classifier is trained or any sample drawn
    net, card = load_classifier(progress=not is_quiet(args))
    ref = real_reference(net, args.n)
    rows: dict[str, Any] = {}
    for m, u in unets.items():
        t0 = time.perf_counter()
        q = sample_quality(u, n=args.n, steps=args.steps, seed=args.seed, classifier=net, reference=ref)
        rows[m] = {**unet_cost(u), **q.to_dict()}
        say(args, f"{m}: {q} ({time.perf_counter() - t0:.0f}s)")
    data: dict[str, Any] = {"classifier_test_accuracy": card["test_accuracy"], "models": rows}
    if args.time:
        cmp = sampling_time(unets)
        data["sampling_time"] = cmp.to_dict()
    lines = [f"classifier (FID-FMNIST features, not Inception) test accuracy {card['test_accuracy']:.3f}"]
    for m, row in rows.items():
        lines.append(f"{m}: params {row['params']:,}, MACs/step {row['macs_per_step']:,}, FID-FMNIST {row['fid']:.2f} "
                     f"(floor {row['fid_floor']:.2f}), KID {row['kid'] * 1e3:.2f}e-3, P/R {row['precision']:.2f}/"
                     f"{row['recall']:.2f}, class acc {row['class_accuracy']:.2f}")
    if args.time:
        lines.append(str(cmp))
    emit(args, data, "\n".join(lines))
    return 0
