"""``prunekit merge``: merge fine-tuned models into their base (DARE, TIES, DELLA, magnitude, task
arithmetic, averaging), tensor by tensor from safetensors, and save a folder ``from_pretrained`` loads.

    prunekit merge --base smollm2-135m --models ft-a/ ft-b/ --method dare_ties --density 0.1 --seed 0 --out merged/
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_common, emit, say


def add_parser(subs: argparse._SubParsersAction) -> None:
    from ..merge.config import MERGE_METHODS

    p = subs.add_parser("merge", help="merge fine-tuned models into their base (DARE, TIES, DELLA, ...)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model: a Hugging Face folder, an alias or a .gguf file")
    p.add_argument("--models", nargs="+", required=True, metavar="FOLDER", help="the fine-tuned models")
    p.add_argument("--method", default="dare_ties", help=f"one of {', '.join(MERGE_METHODS.names())} (default dare_ties)")
    p.add_argument("--density", type=float, default=None, help="fraction of each delta kept, in (0, 1]")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one coefficient per model (default 1 each)")
    p.add_argument("--scale", type=float, default=None, help="λ, multiplies the merged delta (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random drops (default 0)")
    p.add_argument("--semantics", choices=["paper", "mergekit"], default=None,
                   help="the papers' arithmetic (default) or mergekit's for the same method name")
    p.add_argument("--trim-scope", choices=["model", "tensor"], default=None,
                   help="ties/magnitude: rank magnitudes over the whole model (paper) or per tensor (mergekit)")
    p.add_argument("--epsilon", type=float, default=None, help="della: spread of the drop probabilities")
    p.add_argument("--no-rescale", action="store_true", help="dare/della: do not rescale the kept entries")
    p.add_argument("--q", default=None, metavar="Q|search",
                   help="dare: DAREx-q, multiply the kept entries by 1/Q instead of 1/density; 'search' picks, per "
                        "fine-tune, the Q that changes its outputs on calibration text least")
    p.add_argument("--calib", default=None, metavar="TEXT", help="--q search: calibration text (default pydocs)")
    p.add_argument("--nsamples", type=int, default=None, help="--q search: calibration windows (default 4)")
    p.add_argument("--seqlen", type=int, default=None, help="--q search: tokens per window (default 256)")
    p.add_argument("--skip", nargs="+", default=None, metavar="GLOB", help="tensors copied from the base unchanged")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if prunekit wrote it")
    add_common(p)
    p.set_defaults(func=run)


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user gave (unset flags are left to the method's defaults)."""
    fields: dict[str, Any] = {}
    for flag, key in (("density", "density"), ("weights", "weights"), ("scale", "scale"), ("seed", "seed"),
                      ("semantics", "semantics"), ("trim_scope", "trim_scope"), ("epsilon", "epsilon"),
                      ("skip", "skip"), ("calib", "calib"), ("nsamples", "nsamples"), ("seqlen", "seqlen")):
        value = getattr(args, flag)
        if value is not None:
            fields[key] = value
    if args.no_rescale:
        fields["rescale"] = False
    if args.q is not None:
        fields["q"] = args.q if args.q == "search" else _number(args.q, "--q")
    return fields


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{flag} takes a number in (0, 1] or 'search', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..merge import merge
    from ..merge.config import MERGE_METHODS

    cls = MERGE_METHODS.config(args.method)
    if "density" in cls.model_fields and args.density is None:
        raise ValueError(f"--density is required for --method {args.method} (the fraction of each delta kept, in (0, 1])")
    say(args, f"merging {len(args.models)} model(s) into {args.base} with {args.method} ...")
    report = merge(args.base, args.models, args.method, out=args.out, overwrite=args.overwrite,
                   progress=not (args.quiet or args.json), **config_fields(args))
    emit(args, report.to_dict(), f"{report}\n\nsaved to {args.out}/")
    return 0
