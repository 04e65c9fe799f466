"""How a language model's measurements read as text: the before/after table with each timed figure's
spread, how the timings were taken, and the report a pruned folder carries (``report.txt``)."""

from __future__ import annotations

from typing import Any

from .base import Workspace


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


def render_lm_report(ws: Workspace, saved: Any = None) -> str:
    """The text ``prunekit prune`` prints and saves: what ran, the measurements (one column per measure
    stage), how they were timed, and what was saved (``saved``: :class:`prunekit.export.SavedModel`)."""
    from .. import __version__

    calib = ws.meta.get("calibration") or {"source": "none"}
    ev = ws.meta.get("evaluation") or {}
    head = f"prunekit {__version__}: {ws.source}, " + "\n".join(ws.headlines) + "\n"
    head += (f"calibration: {calib['source']}, {calib['nsamples']}×{calib['seqlen']} tokens, seed {calib['seed']}\n\n"
             if "nsamples" in calib else "calibration: none\n\n")
    text = head + (table(ws.columns, f"perplexity ({ev.get('source')}, {ev.get('windows')}×{ev.get('seqlen')})")
                   if ws.columns else "(nothing measured)")
    timed = ws.state.get("timed")
    if timed is not None:
        text += "\n\n" + "\n".join(timing_lines(timed))
    if saved is not None:
        last = list(ws.columns)[-1] if ws.columns else "saved"
        source = ws.source_path.name if ws.source_path is not None else ws.source
        text += f"\nsaved file: before = the source ({source}), {last} = {saved}"
    return text
