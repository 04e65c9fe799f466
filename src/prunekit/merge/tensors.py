"""Merging one tensor, a group of rows at a time: the arithmetic every merge method shares.

A tensor is cut into row groups of about a million entries (:func:`row_groups`; the cut depends on
the shape only), and each group is merged on its own (deltas → sparsify → elect or sum → scale → add
back), so memory holds a few row groups, never whole tensors. Random drops draw from a generator
derived from the seed, the model's position, the tensor's name and the group's first row, so the
merge is the same whatever the order of tensors and wherever it runs.

:class:`MagnitudeHistogram` finds, exactly and without holding the deltas, the magnitude threshold of
a trim (the ``density`` quantile of ``|δ|``): over the whole model for TIES' paper trim, over one tensor
for mergekit's.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..core.finite import NonFiniteError
from .config import DellaConfig, MergeConfig, _Sparse, _Trim
from .sparsify import dare, della, elect_and_merge, tensor_generator

CHUNK = 1 << 20  # entries per row group

# mergekit's `normalize` default per method (divide the combined delta by the summed weights).
_MERGEKIT_NORMALIZE = {"linear": True, "task_arithmetic": False, "dare_linear": False, "dare_ties": False,
                       "ties": True, "magnitude": False, "della": True, "della_linear": False}

Reader = Callable[[int, int], Tensor]  # rows [start, stop) of a tensor


def row_groups(shape: tuple[int, ...] | torch.Size) -> list[tuple[int, int]]:
    """The row groups ``[(start, stop), ...]`` along dim 0 a tensor of ``shape`` is merged in (one group for
    0-d and 1-d tensors; else about :data:`CHUNK` entries a group, whole rows)."""
    shape = tuple(shape)
    if len(shape) <= 1:
        return [(0, shape[0] if shape else 1)]
    rows, row_len = shape[0], max(1, math.prod(shape[1:]))
    step = max(1, CHUNK // row_len)
    return [(r, min(r + step, rows)) for r in range(0, rows, step)] or [(0, 0)]


def dtype_kind(dtype: torch.dtype) -> str:
    """``floating``, ``complex``, ``bool`` or ``integer``: tensors of two kinds are never merged together."""
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def check_finite_input(t: Tensor, who: str, name: str) -> None:
    """Raise :class:`NonFiniteError` when tensor ``name`` of ``who`` (the base, a model) holds NaN or ±inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        nan = int(torch.isnan(t).sum())
        raise NonFiniteError(f"tensor {name!r} of {who} holds {nan:,} NaN and {int((~torch.isfinite(t)).sum()) - nan:,} "
                             "infinite value(s); a merge of it would be NaN/inf. Fix or re-export that model "
                             "(nothing was written)")


def _check_merged(name: str, merged: Tensor, base: Tensor, models: list[Tensor], labels: list[str],
                  config: MergeConfig, weights: list[float]) -> None:
    """Raise when a merged row group is not finite, naming the input that holds NaN/inf, or else the overflow."""
    if not merged.is_floating_point() or bool(torch.isfinite(merged).all()):
        return
    check_finite_input(base, "the base", name)
    for m, label in zip(models, labels):
        check_finite_input(m, label, name)
    bad = int((~torch.isfinite(merged)).sum())
    raise NonFiniteError(f"the merged tensor {name!r} holds {bad:,} NaN/infinite value(s) although every input is "
                         f"finite: the merge overflows {merged.dtype} (scale {config.scale:g}, weights "
                         f"{', '.join(f'{w:g}' for w in weights)}); use a smaller --scale or --weights")


def is_merged(name: str, tensor_dtype: torch.dtype, config: MergeConfig) -> bool:
    """Whether tensor ``name`` is merged (a floating tensor not matched by ``config.skip``) or copied from the base."""
    if not tensor_dtype.is_floating_point:
        return False
    return not any(fnmatch.fnmatchcase(name, pat) for pat in config.skip)


def _rescale_mode(config: MergeConfig) -> str | None:
    if not getattr(config, "rescale", True):
        return None
    return "exact" if config.semantics == "paper" else "l1"


def needs_model_thresholds(config: MergeConfig) -> bool:
    """Whether the method trims by a model-wide magnitude threshold (TIES/magnitude with ``trim_scope="model"``)."""
    return isinstance(config, _Trim) and config.sparsify == "magnitude" and config.density < 1 and config.scope() == "model"


def needs_tensor_thresholds(config: MergeConfig) -> bool:
    """Whether the method trims each tensor to its own top-``density`` entries (mergekit's scope)."""
    return isinstance(config, _Trim) and config.sparsify == "magnitude" and config.density < 1 and config.scope() == "tensor"


@dataclass
class Trim:
    """A magnitude trim: entries with ``|δ| > threshold`` are kept, and of those equal to it, the first
    ``ties`` in row-major order (None: all of them)."""

    threshold: float
    ties: int | None = None

    def apply(self, delta: Tensor, state: list[int]) -> Tensor:
        """``delta`` trimmed; ``state[0]`` counts the tied entries already kept in earlier row groups."""
        a = delta.abs()
        keep = a > self.threshold
        if self.ties is None:
            keep |= a == self.threshold
        elif self.ties > state[0]:
            tied = (a == self.threshold).reshape(-1)
            pos = torch.cumsum(tied.to(torch.int32), 0)
            keep |= (tied & (pos <= self.ties - state[0])).reshape(delta.shape)
            state[0] += int(tied.sum())
        return delta * keep


def sparsify_delta(delta: Tensor, config: MergeConfig, model_index: int, key: str,
                   trim: Trim | None = None, trim_state: list[int] | None = None, *,
                   rescale: str | None = "config") -> Tensor:
    """One model's delta (a row group) after the method's sparsification; ``key`` names the row group.
    ``rescale`` overrides the config's rescaling (None: none)."""
    if config.sparsify is None:
        return delta
    assert isinstance(config, _Sparse)
    if config.density >= 1:
        return delta
    mode = _rescale_mode(config) if rescale == "config" else rescale
    if config.sparsify == "dare":
        return dare(delta, config.density, tensor_generator(config.seed, model_index, key), mode)
    if config.sparsify == "magnitude":
        assert trim is not None, "a magnitude trim needs its threshold"
        return trim.apply(delta, trim_state if trim_state is not None else [0])
    if config.sparsify == "della":
        assert isinstance(config, DellaConfig)
        lo, hi = config.keep_range()
        return della(delta, lo, hi, tensor_generator(config.seed, model_index, key), mode)
    raise ValueError(f"unknown sparsification {config.sparsify!r}")


@dataclass
class MergeCounts:
    """Per model: delta entries that were non-zero before and after sparsifying."""

    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)

    def add(self, i: int, before: int, after: int) -> None:
        while len(self.before) <= i:
            self.before.append(0)
            self.after.append(0)
        self.before[i] += before
        self.after[i] += after


def _merge_group(key: str, base: Tensor, models: list[Tensor], config: MergeConfig, weights: list[float],
                 trims: list[Trim | None], trim_states: list[list[int]], counts: MergeCounts,
                 factors: list[float] | None = None) -> Tensor:
    b = base.float()
    if config.average:
        total = sum(weights)
        avg = sum(w * m.float() for w, m in zip(weights, models)) / total
        return (b + config.scale * (avg - b)).to(base.dtype)
    deltas = []
    for i, m in enumerate(models):
        d = m.float() - b
        nz = int(torch.count_nonzero(d))
        if factors is None:
            d = sparsify_delta(d, config, i, key, trims[i], trim_states[i])
        else:  # the whole tensor's factor: mergekit's L1 rescale or DAREx-q's 1/q
            d = sparsify_delta(d, config, i, key, trims[i], trim_states[i], rescale=None) * factors[i]
        counts.add(i, nz, int(torch.count_nonzero(d)) if config.sparsify else nz)
        deltas.append(d)
    mergekit = config.semantics == "mergekit"
    method = config.method  # type: ignore[attr-defined]
    if config.elect:
        mean = _MERGEKIT_NORMALIZE[method] if mergekit else True
        merged = elect_and_merge(deltas, weights, weighted_election=mergekit, mean=mean)
    else:
        merged = sum(w * d for w, d in zip(weights, deltas))
        if mergekit and _MERGEKIT_NORMALIZE[method]:
            total = sum(weights)
            merged = merged / (total if abs(total) > 1e-8 else 1.0)
    return (b + config.scale * merged).to(base.dtype)


def tensor_trims(name: str, shape: tuple[int, ...], readers: list[Reader], base: Reader,
                 config: MergeConfig) -> list[Trim]:
    """Per model, the exact top-``density`` trim of this one tensor's delta (ties broken by position)."""
    groups = row_groups(shape)
    hists = [MagnitudeHistogram() for _ in readers]
    for r0, r1 in groups:
        b = base(r0, r1).float()
        for h, read in zip(hists, readers):
            h.add(read(r0, r1).float() - b)
    for h in hists:
        h.boundary(config.density, exact_count=True)  # type: ignore[attr-defined]
    for r0, r1 in groups:
        b = base(r0, r1).float()
        for h, read in zip(hists, readers):
            h.add_boundary(read(r0, r1).float() - b)
    return [h.trim() for h in hists]


def merge_tensor_groups(name: str, shape: tuple[int, ...], dtype: torch.dtype, base: Reader, models: list[Reader],
                        config: MergeConfig, model_trims: list[Trim] | None = None,
                        counts: MergeCounts | None = None, labels: list[str] | None = None,
                        searched: list[float] | None = None) -> Iterator[Tensor]:
    """The merged tensor, row group by row group (in the base's dtype). ``base(r0, r1)`` and each of
    ``models`` read rows ``[r0, r1)``; ``model_trims`` are the model-wide trims of a model-scope TIES; ``searched``
    are DAREx-q's q per model (``q="search"``, :func:`prunekit.merge.darex.search_q`).
    A row group that comes out NaN/inf is an error naming the tensor and the input (``labels`` name the models)
    or the overflow."""
    counts = counts if counts is not None else MergeCounts()
    labels = labels or [f"model {i}" for i in range(len(models))]
    groups = row_groups(shape)
    if not is_merged(name, dtype, config):
        for r0, r1 in groups:
            yield base(r0, r1)
        return
    weights = config.weight_list(len(models))
    if config.average and sum(weights) == 0:
        raise ValueError("linear merge: the weights sum to 0; give weights with a non-zero sum")
    if needs_tensor_thresholds(config):
        trims: list[Trim | None] = list(tensor_trims(name, shape, models, base, config))
    elif needs_model_thresholds(config):
        if model_trims is None:
            raise ValueError("a model-wide trim needs the model's thresholds (model_trims)")
        trims = list(model_trims)
    else:
        trims = [None] * len(models)
    factors = _tensor_factors(name, groups, base, models, config, searched)
    states = [[0] for _ in models]
    for r0, r1 in groups:
        key = name if len(groups) == 1 else f"{name}@{r0}"
        b = base(r0, r1)
        ms = [read(r0, r1) for read in models]
        for i, m in enumerate(ms):
            if m.shape != b.shape:
                raise ValueError(f"tensor {name!r}: model {i} has shape {tuple(m.shape)}, the base {tuple(b.shape)}")
        merged = _merge_group(key, b, ms, config, weights, trims, states, counts, factors)
        _check_merged(name, merged, b, ms, labels, config, weights)
        yield merged


def _tensor_factors(name: str, groups: list[tuple[int, int]], base: Reader, models: list[Reader],
                    config: MergeConfig, searched: list[float] | None) -> list[float] | None:
    """Per model, the one factor this tensor's unscaled survivors are multiplied by (mergekit's L1 rescale or
    DAREx-q's 1/q, given or searched), or None when the sparsifier rescales entry by entry itself (DARE's
    1/density, DELLA's 1/pᵢ)."""
    if config.sparsify not in ("dare", "della") or getattr(config, "density", 1.0) >= 1:
        return None
    if _rescale_mode(config) == "l1":
        return _l1_factors(name, groups, base, models, config)
    q = getattr(config, "q", None)
    if isinstance(q, (int, float)):
        return [1.0 / q] * len(models)
    if q == "search":
        if searched is None or len(searched) != len(models):
            raise ValueError("q='search' needs one searched q per model (prunekit.merge.darex.search_q): merge() "
                             "searches them, merge_state_dicts and merge_tensor take them as searched=[q, ...]")
        return [1.0 / s for s in searched]
    return None


def _l1_factors(name: str, groups: list[tuple[int, int]], base: Reader, models: list[Reader],
                config: MergeConfig, eps: float = 1e-7) -> list[float]:
    """mergekit's rescale: per model, ‖δ‖₁ / ‖sparsified δ‖₁ over the whole tensor (1 when either is tiny)."""
    before = [0.0] * len(models)
    after = [0.0] * len(models)
    for r0, r1 in groups:
        key = name if len(groups) == 1 else f"{name}@{r0}"
        b = base(r0, r1).float()
        for i, read in enumerate(models):
            d = read(r0, r1).float() - b
            before[i] += float(d.abs().sum())
            after[i] += float(sparsify_delta(d, config, i, key, rescale=None).abs().sum())
    return [bf / af if bf >= eps and af >= eps else 1.0 for bf, af in zip(before, after)]


def _rows(t: Tensor) -> Reader:
    return lambda r0, r1: t if t.dim() <= 1 else t[r0:r1]


def merge_tensor(name: str, base: Tensor, models: list[Tensor], config: MergeConfig,
                 model_trims: list[Trim] | None = None, searched: list[float] | None = None) -> Tensor:
    """Merge one in-memory tensor of the fine-tuned ``models`` into ``base`` by ``config`` (computed in float32,
    returned in the base's dtype). A model-scope TIES trim needs ``model_trims``; DAREx-q with ``q="search"``
    the ``searched`` q of each model."""
    for i, m in enumerate(models):
        if m.shape != base.shape:
            raise ValueError(f"tensor {name!r}: model {i} has shape {tuple(m.shape)}, the base {tuple(base.shape)}")
    parts = list(merge_tensor_groups(name, tuple(base.shape), base.dtype, _rows(base), [_rows(m) for m in models],
                                     config, model_trims, searched=searched))
    return parts[0] if base.dim() <= 1 else torch.cat(parts)


_BUCKETS = 1 << 15  # the top 15 bits of a non-negative float32 (exponent + 7 mantissa bits): monotone in value


def _bucket(a: Tensor) -> Tensor:
    """Bucket of each magnitude ``a`` (non-negative float32)."""
    return a.contiguous().view(torch.int32) >> 16


class MagnitudeHistogram:
    """Exact top-``density`` magnitude threshold of a delta spread over many tensors, in two streaming passes.

    Pass 1 (:meth:`add`) counts ``|δ|`` in 32,768 buckets of the float32 bit pattern (monotone in the
    value); :meth:`boundary` names the bucket that holds the k-th largest; pass 2 (:meth:`add_boundary`)
    keeps only the values in that bucket, and :meth:`trim` sorts them to return the exact k-th largest.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(_BUCKETS, dtype=torch.long)
        self.total = 0
        self._bucket: int | None = None
        self._above = 0
        self._k = 0
        self._exact = False
        self._values: list[Tensor] = []

    def add(self, delta: Tensor) -> None:
        """Count one tensor's (or row group's) magnitudes (pass 1)."""
        a = delta.detach().float().abs().reshape(-1)
        self.counts += torch.bincount(_bucket(a), minlength=_BUCKETS)
        self.total += a.numel()

    def boundary(self, density: float, exact_count: bool = False) -> int | None:
        """The bucket holding the k-th largest magnitude (k = ⌊density × total⌋, at least 1, as TIES' code and
        mergekit count), or None when every entry is kept. With ``exact_count``, :meth:`trim` keeps exactly k
        (ties by position)."""
        k = max(1, int(density * self.total))
        self._exact = exact_count
        if k >= self.total:
            self._bucket = None
            return None
        from_top = torch.flip(self.counts, [0]).cumsum(0)
        idx = int(torch.searchsorted(from_top, torch.tensor(k)))
        self._bucket = _BUCKETS - 1 - idx
        self._above = int(from_top[idx - 1]) if idx > 0 else 0
        self._k = k
        return self._bucket

    def add_boundary(self, delta: Tensor) -> None:
        """Keep the magnitudes of one tensor (or row group) that fall in the boundary bucket (pass 2)."""
        if self._bucket is None:
            return
        a = delta.detach().float().abs().reshape(-1)
        sel = a[_bucket(a) == self._bucket]
        if sel.numel():
            self._values.append(sel)

    def threshold(self) -> float:
        """The exact k-th largest magnitude; 0.0 when every entry is kept."""
        return self.trim().threshold

    def trim(self) -> Trim:
        """The trim that keeps the top k: entries above the k-th largest magnitude, and entries equal to it
        (all of them, or with ``exact_count`` only as many as make k, first in row-major order)."""
        if self._bucket is None:
            return Trim(0.0, None)
        vals = torch.sort(torch.cat(self._values) if self._values else torch.zeros(0), descending=True).values
        need = self._k - self._above  # how many of the boundary bucket's values are kept
        if vals.numel() < need or need < 1:
            raise RuntimeError("magnitude threshold: the second pass did not see the tensors of the first")
        thr = float(vals[need - 1])
        ties = None
        if self._exact:
            ties = need - int((vals > thr).sum())
        return Trim(thr, ties)

    def median(self) -> float:
        """The median magnitude, to the bucket's resolution (its lower edge; about 0.8% relative)."""
        if self.total == 0:
            return 0.0
        idx = int(torch.searchsorted(self.counts.cumsum(0), torch.tensor((self.total + 1) // 2)))
        return float(torch.tensor([idx << 16], dtype=torch.int32).view(torch.float32))
