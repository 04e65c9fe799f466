"""Timing for the token benchmarks, through prunekit's one timing routine
(:func:`prunekit.infra.latency.time_interleaved`): every configuration runs once per round, in turn
(the order reversed every other round), in one process, after warm-up, until each median is known
to 2% or the budget is spent. Per configuration: median wall time and its interquartile spread,
median CPU time, the paired speed-up over the baseline (median of per-round ratios, with its IQR),
and the noisy flag with its reasons (wide spread, or the machine busy)."""

from __future__ import annotations

from typing import Any, Callable

from prunekit.infra.latency import Comparison, time_interleaved


def timed(fns: dict[str, Callable[[], Any]], items: int, *, baseline: str = "full", budget_s: float = 60.0,
          min_rounds: int = 5, max_rounds: int = 40, warmup: int = 1, threads: int | None = 1,
          target_precision: float = 0.02) -> tuple[dict[str, dict[str, Any]], Comparison]:
    """Time ``fns`` (each processes ``items`` items once) interleaved; return per-name figures and
    the :class:`~prunekit.infra.latency.Comparison` they came from."""
    cmp = time_interleaved(fns, warmup=warmup, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s,
                           target_precision=target_precision, threads=threads)
    out: dict[str, dict[str, Any]] = {}
    for name, t in cmp.timings.items():
        sp = cmp.ratio(baseline, name)  # baseline time / this time, per round
        out[name] = {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "spread": t.spread, "cpu_ms": t.cpu_median_ms,
                     "cpu_share": t.cpu_share, "items_per_s_wall": items / (t.median_ms / 1e3),
                     "items_per_s_cpu": items / (t.cpu_median_ms / 1e3) if t.cpu_median_ms > 0 else float("nan"),
                     "speedup": sp.median, "speedup_iqr": sp.iqr, "runs": t.runs,
                     "noisy": t.noisy, "why": t.reasons()}
    return out, cmp


def speedup_cell(row: dict[str, Any]) -> str:
    """'1.92× ±0.04' (half the IQR of the per-round ratios)."""
    return f"{row['speedup']:.2f}× ±{row['speedup_iqr'] / 2:.2f}"


def spread_cell(row: dict[str, Any]) -> str:
    """The wall-time spread (± half the IQR, as a share of the median) and the noisy flag."""
    flag = "; ".join(w.split(":")[0] if w.startswith("machine busy") else w for w in row["why"]) or "ok"
    return f"±{row['spread'] / 2:.0%} ({flag})" if flag != "ok" else f"±{row['spread'] / 2:.0%}"


def conditions(cmp: Comparison) -> str:
    """One line: rounds, why timing stopped, threads, load around it, and whether any figure is noisy."""
    load = "/".join(f"{x:.1f}" for x in (cmp.load_before, cmp.load_after) if x is not None) or "n/a"
    return (f"{cmp.rounds} interleaved rounds after {cmp.warmup} warm-up (stopped on {cmp.stopped}, "
            f"{cmp.seconds:.0f} s), {cmp.threads} thread(s), load average before/after {load}; "
            f"noisy: {'yes' if cmp.noisy else 'no'}")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
