"""The uniform shape a shrink aims at: candidates on a grid, filtered by the budget, scored on calibration.

The search, step by step:

1. **Grid.** Each axis asked for offers a few sizes: attention heads by whole key/value groups (every count
   from all of them down to a third; query heads per group under multi-query attention), MLP neurons and
   the residual width at 100, 87.5, 75, 62.5, 50 and 37.5% (rounded down to a multiple of 32 — the q8_0/q4_0
   block of llama.cpp — where the dense size is one of at least 256, else of 8 where it is one, and to a width the config class accepts with the heads kept — Llama checks
   ``hidden_size % num_attention_heads``), and blocks at 100, 90, … 50%. An axis not asked for keeps its size.
   ``width_multiple`` other than 32 is strict (see :func:`width_options`): every cut width is a multiple of it —
   256 for llama.cpp's K-quants, whose rows must fill 256-wide super-blocks — and so is every head count's
   ``heads × head_dim`` (the row of ``o_proj``); an axis whose grid holds no such size keeps its dense size.
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
# Shapes of the band scored by calibration loss by default. 12 covers the whole band of the bands measured: scored
# whole (benchmarks/shrink_band_scores.py), the lowest-loss shape was 7th of 11 (SmolLM2, seed 0), 4th of 11 (seed 1)
# and 6th of 6 (Gemma 3 270M) in the order below, so scoring 4 missed it on two of three; a shape costs one cut and
# one forward over the calibration windows (23-26 s of CPU on SmolLM2-135M, 57 s on Gemma 3 270M).
DEFAULT_CANDIDATES = 12
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
# llama.cpp's K-quants (q2_K … q6_K) pack rows in super-blocks of QK_K = 256 values. llama-quantize checks each
# tensor's row length (ne[0], the input width of a Linear) and, when 256 does not divide it, warns "<name> - ncols
# N not divisible by 256 (required for type q4_K) -> falling back to q5_0" and writes that tensor in a 32-block
# type instead (q4_K → q5_0, q5_K → q5_1, q6_K → q8_0, q2_K/q3_K → q4_0; F16 when 32 does not divide it either):
# tensor_type_fallback in src/llama-quant.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors.
K_QUANT_BLOCK = 256
DEFAULT_WIDTH_MULTIPLE = QUANT_BLOCK
K_QUANT_PREFIXES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")  # q4_K_M, q5_K_S, ... (llama-quantize's names)


def is_k_quant(name: str | None) -> bool:
    """Whether ``name`` is one of llama.cpp's K-quant types or file types (q4_K, q4_K_M, Q6_K, …)."""
    return name is not None and str(name).strip().lower().startswith(K_QUANT_PREFIXES)


def check_width_multiple(multiple: int) -> int:
    """``multiple`` if it is a positive int, else one clear ValueError."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"the width multiple must be a positive integer (32: q8_0/q4_0 blocks; 256: K-quants), "
                         f"got {multiple!r}")
    return multiple


def resolve_width_multiple(multiple: int | None, quants: Iterable[str | None] = (), flag: str = "width_multiple"
                           ) -> int:
    """The width multiple a search uses: ``multiple`` when given, else 256 when any of ``quants`` (the GGUF
    types the result will be timed or exported at) is a K-quant, else 32. A given multiple that a named K-quant's
    256-wide super-blocks do not divide is one clear error (``flag`` names the option in it)."""
    k = sorted({str(q) for q in quants if is_k_quant(q)})
    if multiple is None:
        return K_QUANT_BLOCK if k else DEFAULT_WIDTH_MULTIPLE
    check_width_multiple(multiple)
    if k and multiple % K_QUANT_BLOCK:
        raise ValueError(f"{flag} {multiple} leaves rows that {k[0]}'s {K_QUANT_BLOCK}-wide super-blocks do not fill, "
                         f"and llama-quantize writes such tensors in another type: use {K_QUANT_BLOCK} (the default "
                         f"with a K-quant) or a multiple of it")
    return multiple


def round_width(n: int, full: int, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> int:
    """``n`` rounded down to a multiple of 32 (the quantization block of llama.cpp's q8_0 and q4_0) where the
    dense size ``full`` is one and at least 256, else of 8 where ``full`` is one, else ``n``. A width that
    does not fill the blocks leaves every tensor that reads it in F16 in a quantized GGUF: measured, a
    SmolLM2 cut to hidden 504 decoded slower than the dense model at q8_0 (0.84×). Any other ``multiple`` is
    strict: ``n`` rounded down to a multiple of it (0 when ``n`` is below it: no such width)."""
    if multiple != DEFAULT_WIDTH_MULTIPLE:
        return n // multiple * multiple
    q = next((q for q in _steps(full) if n >= q), 1)
    return n // q * q if q > 1 else max(1, n)


def _steps(full: int, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> list[int]:
    """Rounding steps for a width axis of dense size ``full``, coarsest first (see :func:`round_width`)."""
    if multiple != DEFAULT_WIDTH_MULTIPLE:
        return [multiple]
    steps = [q for q in ((QUANT_BLOCK, 8) if full >= 8 * QUANT_BLOCK else (8,)) if full % q == 0]
    return steps or [1]


def unaligned(s: Shape, multiple: int) -> list[str]:
    """The row lengths of ``s`` (what llama.cpp's blocks divide: the input width of every 2-D tensor) that a strict
    ``multiple`` does not divide, in words; empty for the default multiple, whose rule is softer."""
    if multiple == DEFAULT_WIDTH_MULTIPLE:
        return []
    rows = (("hidden", s.hidden, "the embedding, head, q/k/v, gate and up projections"),
            ("MLP", s.ffn, "down_proj"), ("heads × head_dim", s.heads * s.head_dim, "o_proj"))
    return [f"{name} {n} is not a multiple of {multiple}, so {what} keep{'s' if name != 'hidden' else ''} rows a "
            f"{multiple}-wide block does not fill (llama-quantize writes them in a fallback type)"
            for name, n, what in rows if n % multiple]


def head_options(s: Shape, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> list[tuple[int, int]]:
    """(query heads, key/value heads) kept: whole groups under GQA, query heads per group under MQA. A strict
    ``multiple`` keeps only the cuts whose ``heads × head_dim`` (the row length of ``o_proj``) it divides."""
    if s.kv_heads > 1:
        rep = s.heads // s.kv_heads
        out = [(k * rep, k) for k in range(s.kv_heads, 0, -1) if k >= s.kv_heads / 3]
    else:
        out = [(h, 1) for h in range(s.heads, 0, -1) if h >= s.heads / 3]
    if multiple == DEFAULT_WIDTH_MULTIPLE:
        return out
    return [(h, kv) for h, kv in out if h == s.heads or h * s.head_dim % multiple == 0]


def _targets(full: int, grid: Iterable[float], multiple: int) -> list[int]:
    """The raw sizes a width axis aims at: the grid's fractions of ``full`` and, for a strict ``multiple`` that
    ``full`` is not one of, the largest multiple under it (SmolLM2's hidden 576 → 512 for K-quants)."""
    raw = [full if f == 1 else math.floor(full * f) for f in grid]
    if multiple != DEFAULT_WIDTH_MULTIPLE and full % multiple and full > multiple:
        raw.append(full // multiple * multiple)
    return raw


def width_options(full: int, multiple: int = DEFAULT_WIDTH_MULTIPLE, grid: Iterable[float] = WIDTH_GRID) -> list[int]:
    """Sizes of a width axis on the grid (distinct, largest first): rounded as :func:`round_width` says; with a
    strict ``multiple``, the dense size and the multiples of it the grid rounds down to (none below it)."""
    out = {full if r == full else round_width(r, full, multiple) for r in _targets(full, grid, multiple)}
    return sorted((w for w in out if w >= 1), reverse=True)


def depth_options(full: int) -> list[int]:
    """Block counts on the grid (at least one)."""
    return sorted({max(1, round(full * f)) for f in DEPTH_GRID}, reverse=True)


class _Widths:
    """Hidden widths the config class accepts, per head layout (cached: validating a config takes time)."""

    def __init__(self, config: object, dense: Shape, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> None:
        self.config, self.dense, self.multiple, self.cache = config, dense, multiple, {}

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
        strict = self.multiple != DEFAULT_WIDTH_MULTIPLE
        for raw in _targets(full, WIDTH_GRID, self.multiple):
            v = None
            if strict:  # the dense width itself, else the largest accepted multiple within 15% under the grid size
                if raw == full and self.accepted(full, heads, kv):
                    v = full
                else:
                    m = self.multiple
                    x = min(raw, full - 1) // m * m
                    low = max(m, int(x * 0.85))
                    while x >= low and not self.accepted(x, heads, kv):
                        x -= m
                    v = x if x >= low else None
            # the largest accepted width within 15% under the grid size, on the coarsest step that has one
            # (32 fills llama.cpp's quant blocks; Llama's hidden % heads check may need a finer one)
            for step in ([] if strict else _steps(full)):
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


def grid(dense: Shape, axes: tuple[str, ...], config: object, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> list[Shape]:
    """Every shape of the grid over ``axes`` (see the module docstring)."""
    heads = head_options(dense, multiple) if "heads" in axes else [(dense.heads, dense.kv_heads)]
    ffns = width_options(dense.ffn, multiple) if "neurons" in axes else [dense.ffn]
    depths = depth_options(dense.layers) if "depth" in axes else [dense.layers]
    widths = _Widths(config, dense, multiple)
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
               slack: float = DEFAULT_SLACK, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> Candidates:
    """Steps 1–4 of the search: the shapes under the budget, best-first; a ValueError if none is."""
    dense_count = counter.measure(dense, target)
    budget = math.floor(target.fraction * dense_count)
    shapes = grid(dense, axes, config, multiple)
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
