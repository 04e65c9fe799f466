"""``prunekit eval``: perplexity, parameters, non-zeros, size and generation speed of a language model.

The model may be any artifact prunekit writes: a dense or compressed-tensors sparse folder, or a GGUF
file; the bytes of its weight files on disk and the peak memory of loading it (in a fresh process)
are measured on the artifact itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..pipeline.report import table, timing_lines
from .common import add_common, emit, is_quiet, say, warn

DEFAULT_EVAL_WINDOWS = 16
DEFAULT_SEQLEN = 512


def add_parser(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("eval", help="perplexity, size and tokens/s of a language model", description=__doc__)
    p.add_argument("--model", required=True,
                   help="an alias (smollm2-135m, minilm-l6), a Hugging Face folder (dense or compressed) or a .gguf file")
    p.add_argument("--ppl", default="pydocs", metavar="TEXT",
                   help="evaluation text: pydocs (default), wikitext2, c4, a text file or a folder")
    p.add_argument("--windows", type=int, default=DEFAULT_EVAL_WINDOWS, help="held-out windows for perplexity")
    p.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN, help="tokens per window")
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens of the timed greedy generation")
    p.add_argument("--no-load-memory", action="store_true",
                   help="skip measuring the peak memory of loading the model (a second, fresh process)")
    add_common(p)
    p.set_defaults(func=run)


def artifact_info(spec: str) -> dict[str, Any]:
    """What the artifact behind ``spec`` is and the bytes of its weight files on disk."""
    from ..export.compressed import sparsity_config_of
    from ..metrics.size import weight_bytes
    from ..models.hf import resolve_model_path

    path = resolve_model_path(spec)
    info: dict[str, Any] = {"path": str(path), "file_bytes": weight_bytes(path)}
    if path.is_file():
        from ..export.gguf import tensor_types

        types: dict[str, int] = {}
        for t in tensor_types(path).values():
            types[t] = types.get(t, 0) + 1
        info["format"] = "gguf (" + ", ".join(f"{n} {t}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])) + ")"
    else:
        import json

        sc = sparsity_config_of(path)
        dtype = json.loads((path / "config.json").read_text()).get("dtype") or "unstated dtype"
        info["format"] = f"compressed-tensors {sc['format']}, {dtype}" if sc else f"safetensors, {dtype}"
    return info


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--windows", args.windows, 1), ("--seqlen", args.seqlen, 2),
                             ("--gen-tokens", args.gen_tokens, 1)):
        if value < low:
            raise ValueError(f"{flag} must be an integer of at least {low}, got {value}")


def _check_model(args: argparse.Namespace, lm: Any) -> None:
    from ..core.inputs import context_length

    if not lm.causal_lm:
        defaults = {"ppl": "pydocs", "windows": DEFAULT_EVAL_WINDOWS, "seqlen": DEFAULT_SEQLEN, "gen_tokens": 32}
        ignored = [f"--{k.replace('_', '-')}" for k, v in defaults.items() if getattr(args, k) != v]
        if ignored:
            warn(args, f"{args.model} is not a causal LM: perplexity and generation are not measured, so "
                       f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored")
        return
    ctx = context_length(lm.model)
    if ctx is not None and args.seqlen > ctx:
        raise ValueError(f"--seqlen {args.seqlen} is longer than the context of {args.model} ({ctx} tokens, "
                         f"config.max_position_embeddings); use --seqlen {ctx} or less")


def run(args: argparse.Namespace) -> int:
    from ..datasets.text import eval_windows
    from ..export.load import load_artifact
    from ..metrics.lm import measure_lm
    from ..metrics.memory import peak_load_memory
    from ..models.hf import read_prunekit_json

    _check_args(args)
    lm = load_artifact(args.model)
    info = artifact_info(args.model)  # after loading: the loader's errors name bad files
    _check_model(args, lm)
    progress = not is_quiet(args)
    windows = None
    if lm.causal_lm:
        windows = eval_windows(lm.tokenizer, args.ppl, args.windows, args.seqlen,
                               default=args.ppl == "pydocs", say=lambda t: say(args, t))
    say(args, f"evaluating {args.model} ...")
    figures = measure_lm(lm.model, lm.tokenizer, windows, causal=lm.causal_lm, gen_tokens=args.gen_tokens,
                         progress=progress)
    figures["file_bytes"] = info["file_bytes"]
    memory = None
    if not args.no_load_memory:
        say(args, "measuring the peak memory of loading it and one forward pass, in a fresh process ...")
        memory = peak_load_memory(args.model)
        figures["load_peak_bytes"] = memory.peak_bytes
    data = {"model": args.model, "artifact": info, "evaluation": {"source": args.ppl, "windows": args.windows, "seqlen": args.seqlen},
            **figures, "load_memory": memory.to_dict() if memory else None,
            "pruned_with": read_prunekit_json(args.model) if Path(args.model).is_dir() else None}
    text = table({"model": figures}, f"perplexity ({args.ppl}, {args.windows}×{args.seqlen})")
    how = timing_lines({"timing": figures["timing"], "ratios": {}})
    if how:
        text += "\n\n" + "\n".join(how)
    text += f"\n\n{info['path']}: {info['format']}"
    if memory:
        text += (f"\nloading + one forward pass: peak RSS {memory.peak_bytes / 1e6:,.0f} MB in a fresh process, "
                 f"{memory.added_bytes / 1e6:,.0f} MB above its imports")
    emit(args, data, text)
    return 0
