"""The last lines of ``make demo``: the Wanda row beside the llama.cpp row, read from what the demo wrote.

    python scripts/demo_summary.py PRUNED_FOLDER SHRUNK_FOLDER ENGINE_JSON

PRUNED_FOLDER is ``prunekit prune``'s output (its prunekit.json: perplexity before/after, the paired generation
ratio), SHRUNK_FOLDER ``prunekit shrink``'s (perplexity of the distilled model on the same held-out windows),
ENGINE_JSON ``prunekit eval --engine llama.cpp --model SHRUNK.gguf --baseline DENSE.gguf --json``'s output (paired
decode speed-up, bytes, llama-perplexity). Prints a table; writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _get(data: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return None
        data = data[k]
    return data


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "–"


def summary(pruned: dict[str, Any], shrunk: dict[str, Any], engine: dict[str, Any]) -> str:
    """The table (see the module docstring)."""
    window = _get(pruned, "evaluation") or {}
    where = f"{window.get('source', 'pydocs')}, {window.get('windows', '?')}×{window.get('seqlen', '?')}"
    shrink_where = _get(shrunk, "perplexity_text") or {}
    same = (shrink_where.get("windows"), shrink_where.get("seqlen")) == (window.get("windows"), window.get("seqlen"))
    gen = _get(pruned, "timing", "ratios", "generation", "median")  # time ratio after/before
    wanda_speed = f"{1 / gen:.2f}× generation (transformers, paired)" if isinstance(gen, (int, float)) else "–"
    decode = _get(engine, "speedups", "model", "decode") or {}
    threads = engine.get("threads", 1)
    engine_speed = (f"{decode['median']:.2f}× ±{decode['iqr'] / 2:.2f} decode (llama.cpp q8_0, {threads} thread"
                    f"{'s' if threads != 1 else ''}, paired)") if "median" in decode else "–"
    kd = _get(shrunk, "distill") or {}
    kept = _get(shrunk, "shrink", "non_embedding_kept")
    method = _get(pruned, "method") or "wanda"
    sparsity = _get(pruned, "settings", "sparsity")
    rows = [
        ("dense", _get(pruned, "before", "perplexity"), _get(engine, "perplexity", "baseline", "perplexity"), "1 (baseline)",
         _get(engine, "models", "baseline", "bytes"), "q8_0"),
        (f"{method} {_num(sparsity, '.0%')} (masks)", _get(pruned, "after", "perplexity"), None, wanda_speed,
         _get(pruned, "after", "file_bytes"), _get(pruned, "saved", "dtype") or "folder"),
        (f"shrunk to {_num(kept, '.1%')} + KD {kd.get('steps', 0)} steps",
         _get(shrunk, "perplexity", "distilled") or _get(shrunk, "perplexity", "shrunk"),
         _get(engine, "perplexity", "model", "perplexity"), engine_speed, _get(engine, "models", "model", "bytes"),
         "q8_0"),
    ]
    head = f"{'':34} {'perplexity':>10} {'llama.cpp':>10}  {'speed vs dense':<56} {'on disk':>9}"
    lines = ["", f"make demo: {_get(pruned, 'model') or 'the model'}, held-out {where} — what each buys", head,
             "-" * len(head)]
    for name, ppl, lppl, speed, size, kind in rows:
        mb = f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) else "–"
        lines.append(f"{name:34} {_num(ppl, '10.2f'):>10} {_num(lppl, '10.2f'):>10}  {speed:<56} {mb:>9} {kind}")
    lines.append(f"perplexity: transformers over the same {where} windows"
                 + ("" if same else " (the shrunk row over its own windows: see its report)")
                 + f"; llama.cpp: llama-perplexity, {_get(engine, 'evaluation', 'windows')}×"
                 f"{_get(engine, 'evaluation', 'seqlen')} tokens of the same held-out split")
    if kd:
        lines.append(f"KD: {kd.get('tokens', 0):,} tokens in {kd.get('seconds', 0):.0f} s wall "
                     f"({kd.get('cpu_seconds', 0):.0f} s CPU) — a taste; benchmarks/ distil far longer")
    if engine.get("noisy"):
        lines.append("! llama.cpp timings flagged noisy (a busy machine): the paired ratio is the figure to read")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    pruned, shrunk, engine = (Path(a) for a in argv)
    data = [json.loads((p / "prunekit.json" if p.is_dir() else p).read_text()) for p in (pruned, shrunk, engine)]
    print(summary(*data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
