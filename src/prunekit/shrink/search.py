"""The uniform shape a shrink aims at: candidates on a grid, filtered by the budget, scored on calibration.

The search, step by step:

1. **Grid.** Each axis asked for offers a few sizes: attention heads by whole key/value groups (every count
   from all of them down to a third; query heads per group under multi-query attention), MLP neurons and
   the residual width at 100, 87.5, 75, 62.5, 50 and 37.5% (rounded down to a multiple of 8 where the
   dense size is one, and to a width the config class accepts with the heads kept — Llama checks
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


def _round8(n: int, full: int) -> int:
    return max(8, n // 8 * 8) if full % 8 == 0 and n >= 8 else max(1, n)


def head_options(s: Shape) -> list[tuple[int, int]]:
    """(query heads, key/value heads) kept: whole groups under GQA, query heads per group under MQA."""
    if s.kv_heads > 1:
        rep = s.heads // s.kv_heads
        return [(k * rep, k) for k in range(s.kv_heads, 0, -1) if k >= s.kv_heads / 3]
    return [(h, 1) for h in range(s.heads, 0, -1) if h >= s.heads / 3]


def width_options(full: int) -> list[int]:
    """Sizes of a width axis on the grid (distinct, largest first)."""
    return sorted({full if f == 1 else _round8(math.floor(full * f), full) for f in WIDTH_GRID}, reverse=True)


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
        for target in width_options(full):
            v, step = target, (8 if full % 8 == 0 and target % 8 == 0 else 1)
            while v >= max(1, int(target * 0.85)) and not self.accepted(v, heads, kv):
                v -= step
            if v >= max(1, int(target * 0.85)) and v not in out:
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
