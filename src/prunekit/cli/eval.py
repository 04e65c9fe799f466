"""``prunekit eval``: perplexity, parameters, non-zeros, size and generation speed of a language model.

The model may be any artifact prunekit writes: a dense or compressed-tensors sparse folder, or a GGUF
file; the bytes of its weight files on disk and the peak memory of loading it (in a fresh process)
are measured on the artifact itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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


def measure_lm(model: Any, tokenizer: Any, windows: Any, *, causal: bool = True, gen_tokens: int = 32,
               progress: bool = True, speed: bool = False) -> dict[str, Any]:
    """Perplexity over ``windows`` (causal LMs), parameters, non-zeros, dense/sparse size and tokens/s;
    with ``speed``, also the MACs of a 128-token input and the CPU latency of a forward pass at batch 1
    and batch 8 (128 tokens each)."""
    import torch

    from ..core.stats import summary
    from ..metrics.generation import generation_speed
    from ..core.latency import latency
    from ..metrics.perplexity import perplexity

    example = None
    if speed:
        vocab = int(getattr(model.config, "vocab_size", 1000))
        example = {"input_ids": torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))}
    s = summary(model, example_inputs=example)
    out: dict[str, Any] = {
        "params": s.params, "nonzeros": s.nonzeros, "sparsity": s.sparsity,
        "dense_bytes": s.dense_bytes, "sparse_bytes": s.sparse_bytes,
        "perplexity": None, "tokens_per_s": None,
    }
    if speed:
        batch8 = {"input_ids": example["input_ids"].repeat(8, 1)}
        out["macs_128_tokens"] = s.macs
        out["latency_ms_batch1"] = latency(model, example, runs=5, warmup=1, threads=None).median_ms
        out["latency_ms_batch8"] = latency(model, batch8, runs=3, warmup=1, threads=None).median_ms
    if causal:
        out["perplexity"] = perplexity(model, windows, progress=progress)
        out["tokens_per_s"] = generation_speed(model, tokenizer, new_tokens=gen_tokens).tokens_per_s
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def table(columns: dict[str, dict[str, Any]], ppl_label: str = "perplexity") -> str:
    """A text table with one column per measurement (e.g. before / after)."""
    rows = [
        (ppl_label, "perplexity", lambda v: "-" if v is None else f"{v:.2f}"),
        ("parameters", "params", lambda v: f"{v:,}"),
        ("non-zeros", "nonzeros", lambda v: f"{v:,}"),
        ("sparsity (all parameters)", "sparsity", lambda v: f"{v:.2%}"),
        ("size dense (fp32)", "dense_bytes", _mb),
        ("size sparse (bitmask + values)", "sparse_bytes", _mb),
        ("saved file (bytes on disk)", "file_bytes", _mb),
        ("peak memory, load + 1 forward", "load_peak_bytes", _mb),
        ("generation tokens/s", "tokens_per_s", lambda v: "-" if v is None else f"{v:.1f}"),
        ("MACs (128 tokens)", "macs_128_tokens", lambda v: f"{v / 1e9:.2f} G"),
        ("forward latency, batch 1 × 128", "latency_ms_batch1", lambda v: f"{v:.1f} ms"),
        ("forward latency, batch 8 × 128", "latency_ms_batch8", lambda v: f"{v:.1f} ms"),
    ]
    rows = [r for r in rows if any(col.get(r[1]) is not None or r[1] in ("perplexity", "tokens_per_s")
                                   for col in columns.values())]
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'':<{width}}" + "".join(f"{name:>16}" for name in columns)
    lines = [head, "-" * len(head)]
    for label, key, fmt in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{fmt(col[key]):>16}" for col in columns.values()))
    return "\n".join(lines)


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
    text += f"\n\n{info['path']}: {info['format']}"
    if memory:
        text += (f"\nloading + one forward pass: peak RSS {memory.peak_bytes / 1e6:,.0f} MB in a fresh process, "
                 f"{memory.added_bytes / 1e6:,.0f} MB above its imports")
    emit(args, data, text)
    return 0
