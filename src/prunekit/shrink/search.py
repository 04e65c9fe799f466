"""The uniform shape a shrink aims at: candidates on a grid, filtered by the budget, scored on calibration.

The search, step by step:

1. **Grid.** Each axis asked for offers a few sizes: attention heads by whole key/value groups (every count
   from all of them down to a third; query heads per group under multi-query attention), MLP neurons and
   the residual width at 100, 87.5, 75, 62.5, 50 and 37.5% (rounded down to a multiple of 32 — the q8_0/q4_0
   block of llama.cpp — where the dense size is one of at least 256, else of 8 where it is one, and to a width the config class accepts with the heads kept — Llama checks
   ``hidden_size % num_attention_heads``), and blocks at 100, 90, … 50%. An axis not asked for keeps its size.
2. **Budget.** Every combination's parameters are counted exactly (:class:`~.budget.Counter`); those over
   the budget are dropped. None left: the target is unreachable, and that is said before anything changes.
3. **Band.** Of the shapes under the budget, those within ``slack`` (5 points of the dense count by
   default) of it are kept — smaller ones waste budget; if none is that close, the largest under it.
4. **Order.** The band is ordered by the largest fraction any one axis loses (balanced cuts first: Minitron
   and Adapt-Pruner both find that no axis should be cut hard alone), then by size (larger first).
5. **Score.** The first ``candidates`` shapes are each cut from a copy of the model (depth by Block
   Influence, then heads, neurons and width by activation) and scored by next-token loss on the
   calibration windows; the lowest loss wins. ``candidates=1`` skips the scoring (step 4's order decides).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable

from .budget import Counter, Shape, Target
from .layout import config_change

AXES = ("heads", "neurons", "hidden", "depth")
WIDTH_GRID = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)
DEPTH_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
DEFAULT_SLACK = 0.05


def check_axes(axes: Iterable[str]) -> tuple[str, ...]:
    """The axes, validated and in the canonical order."""
    given = tuple(axes)
    if isinstance(axes, str) or not given:
        raise ValueError(f"axes must be a non-empty sequence of {', '.join(AXES)}, got {axes!r}")
    bad = [a for a in given if a not in AXES]
    if bad:
        raise ValueError(f"unknown axis {bad[0]!r}; the axes are {', '.join(AXES)}")
    return tuple(a for a in AXES if a in given)


QUANT_BLOCK = 32  # llama.cpp's q8_0 / q4_0 block: a row whose length it does not divide is stored F16


def round_width(n: int, full: int) -> int:
    """``n`` rounded down to a multiple of 32 (the quantization block of llama.cpp's q8_0 and q4_0) where the
    dense size ``full`` is one and at least 256, else of 8 where ``full`` is one, else ``n``. A width that
    does not fill the blocks leaves every tensor that reads it in F16 in a quantized GGUF: measured, a
    SmolLM2 cut to hidden 504 decoded slower than the dense model at q8_0 (0.84×)."""
    q = next((q for q in _steps(full) if n >= q), 1)
    return n // q * q if q > 1 else max(1, n)


def _steps(full: int) -> list[int]:
    """Rounding steps for a width axis of dense size ``full``, coarsest first (see :func:`round_width`)."""
    steps = [q for q in ((QUANT_BLOCK, 8) if full >= 8 * QUANT_BLOCK else (8,)) if full % q == 0]
    return steps or [1]


def head_options(s: Shape) -> list[tuple[int, int]]:
    """(query heads, key/value heads) kept: whole groups under GQA, query heads per group under MQA."""
    if s.kv_heads > 1:
        rep = s.heads // s.kv_heads
        return [(k * rep, k) for k in range(s.kv_heads, 0, -1) if k >= s.kv_heads / 3]
    return [(h, 1) for h in range(s.heads, 0, -1) if h >= s.heads / 3]


def width_options(full: int) -> list[int]:
    """Sizes of a width axis on the grid (distinct, largest first)."""
    return sorted({full if f == 1 else round_width(math.floor(full * f), full) for f in WIDTH_GRID}, reverse=True)


def depth_options(full: int) -> list[int]:
    """Block counts on the grid (at least one)."""
    return sorted({max(1, round(full * f)) for f in DEPTH_GRID}, reverse=True)


class _Widths:
    """Hidden widths the config class accepts, per head layout (cached: validating a config takes time)."""

    def __init__(self, config: object, dense: Shape) -> None:
        self.config, self.dense, self.cache = config, dense, {}

    def accepted(self, hidden: int, heads: int, kv: int) -> bool:
        key = (hidden, heads, kv)
        if key not in self.cache:
            self.cache[key] = config_change(self.config, hidden_size=hidden, num_attention_heads=heads,
                                            num_key_value_heads=kv, head_dim=self.dense.head_dim) is None
        return self.cache[key]

    def options(self, heads: int, kv: int, grid: bool) -> list[int]:
        full = self.dense.hidden
        if not grid:
            return [full] if self.accepted(full, heads, kv) else []
        out = []
        for f in WIDTH_GRID:
            raw = full if f == 1 else math.floor(full * f)
            v = None
            # the largest accepted width within 15% under the grid size, on the coarsest step that has one
            # (32 fills llama.cpp's quant blocks; Llama's hidden % heads check may need a finer one)
            for step in _steps(full):
                start = raw - raw % step if raw >= step else raw
                low, x = max(1, int(start * 0.85)), start
                while x >= low and not self.accepted(x, heads, kv):
                    x -= step
                if x >= low:
                    v = x
                    break
            if v is not None and v not in out:
                out.append(v)
        return out


def grid(dense: Shape, axes: tuple[str, ...], config: object) -> list[Shape]:
    """Every shape of the grid over ``axes`` (see the module docstring)."""
    heads = head_options(dense) if "heads" in axes else [(dense.heads, dense.kv_heads)]
    ffns = width_options(dense.ffn) if "neurons" in axes else [dense.ffn]
    depths = depth_options(dense.layers) if "depth" in axes else [dense.layers]
    widths = _Widths(config, dense)
    shapes = []
    for (h, kv), f, L in itertools.product(heads, ffns, depths):
        for H in widths.options(h, kv, "hidden" in axes):
            shapes.append(Shape(H, h, kv, dense.head_dim, f, L))
    return shapes


def cut_fraction(s: Shape, dense: Shape) -> float:
    """The largest fraction any one axis of ``s`` loses against ``dense``."""
    return max(1 - s.hidden / dense.hidden, 1 - s.heads / dense.heads, 1 - s.ffn / dense.ffn,
               1 - s.layers / dense.layers)


@dataclass
class Candidates:
    """The shapes a search scores, in order, with the budget they meet."""

    shapes: list[Shape]
    budget: int
    dense_count: int
    grid_size: int
    under_budget: int

    def fraction(self, counter: Counter, s: Shape, target: Target) -> float:
        """What ``s`` keeps of the dense count the target measures."""
        return counter.measure(s, target) / self.dense_count


def candidates(dense: Shape, counter: Counter, target: Target, axes: tuple[str, ...], config: object,
               slack: float = DEFAULT_SLACK) -> Candidates:
    """Steps 1–4 of the search: the shapes under the budget, best-first; a ValueError if none is."""
    dense_count = counter.measure(dense, target)
    budget = math.floor(target.fraction * dense_count)
    shapes = grid(dense, axes, config)
    under = [s for s in shapes if counter.measure(s, target) <= budget]
    if not under:
        smallest = min(shapes, key=lambda s: counter.measure(s, target))
        reach = counter.measure(smallest, target) / dense_count
        what = "non-embedding parameters" if target.kind == "params" else "weight bytes"
        raise ValueError(f"target {target} cannot be reached with axes {', '.join(axes)}: the smallest shape the "
                         f"search considers ({smallest}) keeps {reach:.1%} of the {what}; ask for "
                         f"{target.kind}={math.ceil(reach * 100) / 100:g} or more"
                         + ("" if len(axes) == len(AXES) else ", or add axes"))
    floor = budget - slack * dense_count
    band = [s for s in under if counter.measure(s, target) >= floor] or \
        [max(under, key=lambda s: counter.measure(s, target))]
    band.sort(key=lambda s: (round(cut_fraction(s, dense), 6), -counter.measure(s, target)))
    return Candidates(band, budget, dense_count, len(shapes), len(under))
