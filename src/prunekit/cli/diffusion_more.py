"""``prunekit diffusion ecodiff | aptp | forget``: EcoDiff (masks learned over the DDIM trajectory, no
retraining), APTP (one pruned UNet per architecture code, a router from class to code) and memorization
deletion (locate the units memorized classes over-activate, delete them). Registered by ``cli/diffusion.py``.

    prunekit diffusion ecodiff --model ddpm --sparsity 0.2 --out ddpm-eco
    prunekit diffusion aptp --model ddpm --macs 0.6 --codes 4 --out ddpm-aptp     # code-<k>/ folders + routing
    prunekit diffusion forget --model ddpm-dup --memorized 1 5 8 --out ddpm-forgot
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_common, emit, say

VERBS = ("ecodiff", "aptp", "forget")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the three verbs to ``prunekit diffusion``'s sub-parsers."""
    e = verbs.add_parser("ecodiff", help="EcoDiff: learn unit masks over the sampling trajectory, remove units, save")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--sparsity", type=float, default=0.2, help="fraction of the UNet's parameters removed (0.2)")
    e.add_argument("--traj-steps", type=int, default=10, help="DDIM steps of the trajectories (10)")
    e.add_argument("--iterations", type=int, default=100)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--mask", default="hard_concrete", choices=["hard_concrete", "sigmoid"])
    e.add_argument("--seed", type=int, default=0)
    _out(e)

    a = verbs.add_parser("aptp", help="APTP: route each class to an architecture code; save one UNet per code")
    a.add_argument("--model", required=True)
    a.add_argument("--out", required=True, help="folder: code-<k>/ UNet folders and the class → code routing")
    a.add_argument("--macs", type=float, default=0.6, help="class-average fraction of MACs per step kept (0.6)")
    a.add_argument("--codes", type=int, default=4)
    a.add_argument("--iterations", type=int, default=200)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--limit", type=int, default=10000, help="training images used (default 10000)")
    a.add_argument("--seed", type=int, default=0)
    _out(a)

    f = verbs.add_parser("forget", help="locate the units memorized classes over-activate and delete them, save")
    f.add_argument("--model", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--memorized", type=int, nargs="+", required=True, help="the classes whose samples copy")
    f.add_argument("--samples", type=int, default=10, help="trajectories per class for the activations (10)")
    f.add_argument("--steps", type=int, default=10, help="DDIM steps of those trajectories (10)")
    f.add_argument("--fraction", type=float, default=0.05, help="at most this share of units is deleted")
    f.add_argument("--min-z", type=float, default=2.0)
    f.add_argument("--seed", type=int, default=0)
    _out(f)


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace --out if prunekit wrote it")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ..infra.atomic import check_distinct, check_output_folder

    check_distinct({"--out": args.out}, {"--model": args.model})
    check_output_folder(args.out, args.overwrite)
    return {"ecodiff": _ecodiff, "aptp": _aptp, "forget": _forget}[args.verb](args)


def _ecodiff(args: argparse.Namespace) -> int:
    from ..diffusion import load_unet, save_unet
    from ..diffusion.ecodiff import EcoDiffConfig, ecodiff_

    cfg = EcoDiffConfig(sparsity=args.sparsity, steps=args.traj_steps, iterations=args.iterations,
                        batch_size=args.batch_size, mask=args.mask, seed=args.seed)
    unet = load_unet(args.model)
    report = ecodiff_(unet, cfg)
    say(args, str(report))
    save_unet(unet, args.out, overwrite=args.overwrite,
              meta={"source": str(args.model), "ecodiff": {**report.to_dict(), "config": cfg.model_dump()}})
    emit(args, {"out": str(args.out), **report.to_dict()}, f"{report}\nsaved {args.out}")
    return 0


def _aptp(args: argparse.Namespace) -> int:
    from ..diffusion import fashion_mnist, load_unet, save_unet
    from ..diffusion.aptp import APTPConfig, code_models, train_aptp
    from ..infra.atomic import output_folder
    from ..infra.meta import write_meta

    cfg = APTPConfig(num_codes=args.codes, macs=args.macs, iterations=args.iterations, batch_size=args.batch_size,
                     seed=args.seed)
    unet = load_unet(args.model)
    x, y = fashion_mnist("train", limit=args.limit)
    result = train_aptp(unet, x, y, cfg)
    say(args, str(result))
    models = code_models(unet, result)
    data: dict[str, Any] = {"out": str(args.out), **result.to_dict(),
                            "folders": {c: f"code-{c}" for c in models}}
    with output_folder(args.out, overwrite=args.overwrite) as tmp:
        for c, m in models.items():
            save_unet(m, tmp / f"code-{c}", meta={"source": str(args.model), "aptp_code": c})
        write_meta(tmp, {"kind": "prunekit-aptp-routing", "source": str(args.model), "config": cfg.model_dump(),
                         **result.to_dict(), "folders": data["folders"]})
    emit(args, data, f"{result}\nsaved {len(models)} code UNets and the routing in {args.out}")
    return 0


def _forget(args: argparse.Namespace) -> int:
    import torch

    from ..diffusion import load_unet, save_unet
    from ..diffusion.memorization import forget_, locate, unit_activations
    from ..diffusion.units import find_unit_layers

    unet = load_unet(args.model)
    n_cls = unet.config.num_class_embeds or 0
    bad = [c for c in args.memorized if not 0 <= c < n_cls]
    others = [c for c in range(n_cls) if c not in args.memorized]
    if bad or not others:
        raise ValueError(f"--memorized must name classes in [0, {n_cls}) and leave at least one other; got "
                         f"{args.memorized}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    layers = find_unit_layers(unet)
    mem = torch.tensor(args.memorized).repeat_interleave(args.samples)
    oth = torch.tensor(others).repeat_interleave(args.samples)
    found = locate(unit_activations(unet, mem, steps=args.steps, seed=args.seed, layers=layers),
                   unit_activations(unet, oth, steps=args.steps, seed=args.seed + 1, layers=layers), layers,
                   fraction=args.fraction, min_z=args.min_z)
    report = forget_(unet, found)
    say(args, str(report))
    if not report.removed:
        say(args, f"no unit passed z > {args.min_z}: the model is saved unchanged")
    record = {"source": str(args.model), "forget": {**report.to_dict(), "located": found.to_dict()}}
    save_unet(unet, args.out, overwrite=args.overwrite, meta=record)
    emit(args, {"out": str(args.out), **record["forget"]}, f"{report}\nsaved {args.out}")
    return 0
