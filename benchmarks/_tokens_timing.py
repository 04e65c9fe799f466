"""Interleaved timing for the token benchmarks: every configuration is timed once per round, in turn,
in one process, so that a shared machine's load falls on all of them alike. Wall-clock and process
CPU time are both kept; ratios are taken within a round, then the median over rounds is reported."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved(configs: dict[str, Callable[[], Callable[[], Any]]], items: int, rounds: int = 5, repeats: int = 3,
                baseline: str | None = None, say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Time each configuration ``repeats`` times per round for ``rounds`` rounds.

    ``configs[name]()`` sets the configuration up and returns ``(run, teardown)``: ``run()`` processes
    ``items`` items once. Returns, per name, the median items/s by wall clock and by CPU time, and
    (when ``baseline`` is given) the median per-round speed-up over the baseline, by both clocks."""
    walls: dict[str, list[float]] = {n: [] for n in configs}
    cpus: dict[str, list[float]] = {n: [] for n in configs}
    for rnd in range(rounds):
        for name, setup in configs.items():
            run, teardown = setup()
            try:
                run()  # warm-up
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(repeats):
                    run()
                walls[name].append((time.perf_counter() - w0) / repeats)
                cpus[name].append((time.process_time() - c0) / repeats)
            finally:
                teardown()
        say(f"  timing round {rnd + 1}/{rounds} done")
    out: dict[str, dict[str, float]] = {}
    for name in configs:
        row = {"items_per_s_wall": items / statistics.median(walls[name]),
               "items_per_s_cpu": items / statistics.median(cpus[name])}
        if baseline is not None:
            row["speedup_wall"] = statistics.median(b / t for b, t in zip(walls[baseline], walls[name]))
            row["speedup_cpu"] = statistics.median(b / t for b, t in zip(cpus[baseline], cpus[name]))
        out[name] = row
    return out


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
