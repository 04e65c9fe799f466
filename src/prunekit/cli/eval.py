"""``prunekit eval``: perplexity, parameters, non-zeros, size and generation speed of a language model.

The model may be any artifact prunekit writes: a dense or compressed-tensors sparse folder, or a GGUF
file; the bytes of its weight files on disk and the peak memory of loading it (in a fresh process)
are measured on the artifact itself. With ``--engine llama.cpp`` a GGUF file is measured in llama.cpp
instead: prefill and decode tokens/s with llama-bench (interleaved with ``--baseline``, paired speed-up)
and perplexity with llama-perplexity on the held-out text.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..pipeline.report import table, timing_lines
from .common import add_common, emit, is_quiet, say, warn

DEFAULT_EVAL_WINDOWS = 16
DEFAULT_SEQLEN = 512
ENGINES = ("transformers", "llama.cpp")
ENGINE_ONLY = {"baseline": None, "rounds": 5, "threads": 1, "prompt_tokens": 128}  # --engine llama.cpp's options


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
    p.add_argument("--engine", choices=ENGINES, default="transformers",
                   help="where to measure: transformers (default, in this process) or llama.cpp (a GGUF file, with "
                        "its llama-bench and llama-perplexity; 'make llama-cpp' builds them)")
    p.add_argument("--baseline", metavar="FILE.gguf",
                   help="--engine llama.cpp: a second GGUF file (the dense model) measured interleaved with --model; "
                        "the speed-up is paired per round")
    p.add_argument("--rounds", type=int, default=5, help="--engine llama.cpp: interleaved llama-bench rounds")
    p.add_argument("--threads", type=int, default=1, help="--engine llama.cpp: threads of every llama.cpp run")
    p.add_argument("--prompt-tokens", type=int, default=128, help="--engine llama.cpp: prefill length timed")
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


def _run_llama_cpp(args: argparse.Namespace) -> int:
    """``--engine llama.cpp``: speed (llama-bench) and perplexity (llama-perplexity) of a GGUF file, interleaved
    with ``--baseline`` when given."""
    from ..metrics.engine_speed import gguf_figures

    for flag, value in (("--model", args.model), ("--baseline", args.baseline)):
        if value is not None and (not Path(value).is_file() or Path(value).suffix != ".gguf"):
            raise ValueError(f"--engine llama.cpp measures GGUF files, and {flag} {value} is not a .gguf file; export "
                             f"it first: prunekit export {value} --to gguf --quant q8_0 --out model.gguf")
    for flag, value, low in (("--rounds", args.rounds, 2), ("--threads", args.threads, 1),
                             ("--prompt-tokens", args.prompt_tokens, 1)):
        if value < low:
            raise ValueError(f"{flag} must be an integer of at least {low}, got {value}")
    if args.baseline is not None and Path(args.baseline).resolve() == Path(args.model).resolve():
        raise ValueError("--baseline and --model are the same file; give the dense model's GGUF as --baseline")
    files = {"baseline": args.baseline, "model": args.model} if args.baseline else {"model": args.model}
    say(args, f"measuring {', '.join(str(f) for f in files.values())} in llama.cpp ...")
    out = gguf_figures(files, args.ppl, ctx=args.seqlen, chunks=args.windows, rounds=args.rounds,
                       prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, threads=args.threads,
                       progress=not is_quiet(args))
    speed = out["speed"]
    data = {"model": args.model, "baseline": args.baseline, "engine": speed.engine, **speed.to_dict(),
            "perplexity": out["perplexity"],
            "evaluation": {"source": args.ppl, "windows": args.windows, "seqlen": args.seqlen, "tool": "llama-perplexity"}}
    text = str(speed) + "\n" + "\n".join(
        f"perplexity ({args.ppl}, {args.windows}×{args.seqlen}, llama-perplexity) {name}: {p['perplexity']:.3f} "
        f"±{p['stderr']:.3f}" for name, p in out["perplexity"].items())
    emit(args, data, text)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..datasets.text import eval_windows
    from ..export.load import load_artifact
    from ..metrics.lm import measure_lm
    from ..metrics.memory import peak_load_memory
    from ..models.hf import read_prunekit_json

    _check_args(args)
    if args.engine == "llama.cpp":
        if args.no_load_memory:
            warn(args, "--no-load-memory is ignored with --engine llama.cpp (it measures no loading memory)")
        return _run_llama_cpp(args)
    changed = [f"--{k.replace('_', '-')}" for k, v in ENGINE_ONLY.items() if getattr(args, k) != v]
    if changed:
        raise ValueError(f"{', '.join(changed)} {'applies' if len(changed) == 1 else 'apply'} to --engine llama.cpp "
                         "only; add --engine llama.cpp (with a GGUF file as --model) or drop the option")
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
