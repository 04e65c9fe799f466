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


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _timed(value: float | None, unit: str, detail: dict[str, Any] | None, digits: int = 1) -> str:
    """A timed figure with its spread (half the interquartile range, as a share) and ``!`` when noisy."""
    if value is None:
        return "-"
    if not detail:
        return f"{value:.{digits}f}{unit}"
    spread = detail.get("spread")
    if spread is None:  # a Latency dict: iqr and median in ms
        spread = detail["iqr_ms"] / detail["median_ms"] if detail.get("median_ms") else 0.0
    return f"{value:.{digits}f}{unit} ±{spread / 2:.0%}" + (" !" if detail.get("noisy") else "")


def table(columns: dict[str, dict[str, Any]], ppl_label: str = "perplexity") -> str:
    """A text table with one column per measurement (e.g. before / after); a timed figure shows its
    spread (±half the interquartile range) and ``!`` when it cannot be trusted."""
    rows: list[tuple[str, str, Any]] = [
        (ppl_label, "perplexity", lambda c: "-" if c.get("perplexity") is None else f"{c['perplexity']:.2f}"),
        ("parameters", "params", lambda c: f"{c['params']:,}"),
        ("non-zeros", "nonzeros", lambda c: f"{c['nonzeros']:,}"),
        ("sparsity (all parameters)", "sparsity", lambda c: f"{c['sparsity']:.2%}"),
        ("size dense (fp32)", "dense_bytes", lambda c: _mb(c["dense_bytes"])),
        ("size sparse (bitmask + values)", "sparse_bytes", lambda c: _mb(c["sparse_bytes"])),
        ("saved file (bytes on disk)", "file_bytes", lambda c: _mb(c["file_bytes"])),
        ("peak memory, load + 1 forward", "load_peak_bytes", lambda c: _mb(c["load_peak_bytes"])),
        ("generation tokens/s", "tokens_per_s", lambda c: _timed(c.get("tokens_per_s"), "", c.get("generation"))),
        ("MACs (128 tokens)", "macs_128_tokens", lambda c: f"{c['macs_128_tokens'] / 1e9:.2f} G"),
        ("forward latency, batch 1 × 128", "latency_ms_batch1",
         lambda c: _timed(c.get("latency_ms_batch1"), " ms", c.get("latency_batch1"))),
        ("forward latency, batch 8 × 128", "latency_ms_batch8",
         lambda c: _timed(c.get("latency_ms_batch8"), " ms", c.get("latency_batch8"))),
    ]
    rows = [r for r in rows if any(col.get(r[1]) is not None or r[1] in ("perplexity", "tokens_per_s")
                                   for col in columns.values())]
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'':<{width}}" + "".join(f"{name:>20}" for name in columns)
    lines = [head, "-" * len(head)]
    for label, key, fmt in rows:
        cells = ["-" if col.get(key) is None and key not in ("perplexity", "tokens_per_s") else fmt(col)
                 for col in columns.values()]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def timing_lines(timed: dict[str, Any]) -> list[str]:
    """How the speed figures were taken, the paired ratios, and a warning when they cannot be trusted."""
    t = timed["timing"]
    if t["threads"] is None:  # nothing was timed
        return []
    if t["interleaved"]:
        how = "timed interleaved (" + ", ".join(t["models"]) + " alternating, repeated)"
    elif len(t["models"]) == 1:
        how = "timed repeatedly"
    else:
        how = "timed apart, not interleaved" + (f" ({t['apart']})" if t.get("apart") else "")
    gen = t.get("generation")
    lines = [f"{how}, {t['threads']} thread(s)"
             + (f"; generation: {gen['prompt_tokens']}-token prompt + {gen['new_tokens']} new tokens, greedy, "
                f"{gen['rounds']} rounds" if gen else "")]
    labels = {"latency_batch1": "forward batch 1", "latency_batch8": "forward batch 8", "generation": "generation time"}
    parts = [f"{labels[k]} {r['median']:.2f}× ±{r['iqr'] / 2:.2f}" for k, r in timed["ratios"].items()]
    if parts:
        lines.append(f"{next(iter(timed['ratios'].values()))['of']}, paired ratio of times: " + ", ".join(parts))
    if t["noisy"]:
        lines.append("! noisy timings — " + "; ".join(t["why"]) + ". Rerun on a quiet machine before acting on them")
    return lines


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
