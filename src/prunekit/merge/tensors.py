"""Merging one tensor: the arithmetic every merge method shares, given the base's tensor and the models'.

:func:`merge_tensor` is the whole method on one tensor (deltas → sparsify → elect or sum → scale → add
back); :class:`MagnitudeHistogram` finds, exactly and without holding the deltas, the model-wide
magnitude threshold TIES' trim needs (the ``density`` quantile of ``|δ|`` over every tensor).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import DellaConfig, MergeConfig, _Sparse, _Trim
from .sparsify import dare, della, elect_and_merge, magnitude, tensor_generator

# mergekit's `normalize` default per method (divide the combined delta by the summed weights).
_MERGEKIT_NORMALIZE = {"linear": True, "task_arithmetic": False, "dare_linear": False, "dare_ties": False,
                       "ties": True, "magnitude": False, "della": True, "della_linear": False}


def is_merged(name: str, tensor_dtype: torch.dtype, config: MergeConfig) -> bool:
    """Whether tensor ``name`` is merged (a floating tensor not matched by ``config.skip``) or copied from the base."""
    if not tensor_dtype.is_floating_point:
        return False
    return not any(fnmatch.fnmatchcase(name, pat) for pat in config.skip)


def _rescale_mode(config: MergeConfig) -> str | None:
    if not getattr(config, "rescale", True):
        return None
    return "exact" if config.semantics == "paper" else "l1"


def sparsify_delta(delta: Tensor, config: MergeConfig, model_index: int, name: str,
                   threshold: float | None = None) -> Tensor:
    """One model's delta after the method's sparsification (unchanged for methods without one)."""
    if config.sparsify is None:
        return delta
    assert isinstance(config, _Sparse)
    if config.sparsify == "dare":
        return dare(delta, config.density, tensor_generator(config.seed, model_index, name), _rescale_mode(config))
    if config.sparsify == "magnitude":
        return magnitude(delta, config.density, threshold)
    if config.sparsify == "della":
        assert isinstance(config, DellaConfig)
        if config.density >= 1:
            return delta
        lo, hi = config.keep_range()
        return della(delta, lo, hi, tensor_generator(config.seed, model_index, name), _rescale_mode(config))
    raise ValueError(f"unknown sparsification {config.sparsify!r}")


@dataclass
class TensorMerge:
    """A merged tensor and, per model, how many of its delta entries were non-zero before and after sparsifying."""

    tensor: Tensor
    nonzero_before: list[int] = field(default_factory=list)
    nonzero_after: list[int] = field(default_factory=list)


def merge_tensor(name: str, base: Tensor, models: list[Tensor], config: MergeConfig,
                 thresholds: list[float | None] | None = None) -> TensorMerge:
    """Merge one tensor of the fine-tuned ``models`` into ``base`` by ``config`` (computed in float32, returned
    in the base's dtype). ``thresholds`` are the model-wide magnitude thresholds of a model-scope trim."""
    for i, m in enumerate(models):
        if m.shape != base.shape:
            raise ValueError(f"tensor {name!r}: model {i} has shape {tuple(m.shape)}, the base {tuple(base.shape)}")
    if not is_merged(name, base.dtype, config):
        return TensorMerge(base)
    weights = config.weight_list(len(models))
    b = base.float()
    if config.average:
        total = sum(weights)
        if total == 0:
            raise ValueError("linear merge: the weights sum to 0; give weights with a non-zero sum")
        avg = sum(w * m.float() for w, m in zip(weights, models)) / total
        out = b + config.scale * (avg - b)
        return TensorMerge(out.to(base.dtype))
    deltas, before, after = [], [], []
    for i, m in enumerate(models):
        d = m.float() - b
        before.append(int(torch.count_nonzero(d)))
        thr = thresholds[i] if thresholds is not None else None
        d = sparsify_delta(d, config, i, name, thr)
        after.append(int(torch.count_nonzero(d)))
        deltas.append(d)
    mergekit = config.semantics == "mergekit"
    if config.elect:
        mean = _MERGEKIT_NORMALIZE[config.method] if mergekit else True  # type: ignore[attr-defined]
        merged = elect_and_merge(deltas, weights, weighted_election=mergekit, mean=mean)
    else:
        merged = sum(w * d for w, d in zip(weights, deltas))
        if mergekit and _MERGEKIT_NORMALIZE[config.method]:  # type: ignore[attr-defined]
            total = sum(weights)
            merged = merged / (total if abs(total) > 1e-8 else 1.0)
    out = b + config.scale * merged
    return TensorMerge(out.to(base.dtype), before, after)


def needs_model_thresholds(config: MergeConfig) -> bool:
    """Whether the method trims by a model-wide magnitude threshold (TIES/magnitude with ``trim_scope="model"``)."""
    return isinstance(config, _Trim) and config.sparsify == "magnitude" and config.density < 1 and config.scope() == "model"


_BUCKETS = 1 << 15  # the top 15 bits of a non-negative float32 (exponent + 7 mantissa bits): monotone in value


def _bucket(x: Tensor) -> Tensor:
    return (x.abs().float().contiguous().view(torch.int32) >> 16).long()


class MagnitudeHistogram:
    """Exact top-``density`` magnitude threshold of a delta spread over many tensors, in two streaming passes.

    Pass 1 (:meth:`add`) counts ``|δ|`` in 32,768 buckets of the float32 bit pattern (monotone in the
    value); :meth:`boundary` names the bucket that holds the k-th largest; pass 2 (:meth:`add_boundary`)
    keeps only the values in that bucket, and :meth:`threshold` sorts them to return the exact k-th largest.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(_BUCKETS, dtype=torch.long)
        self.total = 0
        self._bucket: int | None = None
        self._above = 0
        self._k = 0
        self._values: list[Tensor] = []

    def add(self, delta: Tensor) -> None:
        """Count one tensor's magnitudes (pass 1)."""
        self.counts += torch.bincount(_bucket(delta).reshape(-1), minlength=_BUCKETS)
        self.total += delta.numel()

    def boundary(self, density: float) -> int | None:
        """The bucket holding the k-th largest magnitude (k = ⌈density × total⌉), or None when all are kept."""
        k = max(1, int(round(density * self.total)))
        if k >= self.total:
            return None
        from_top = torch.flip(self.counts, [0]).cumsum(0)
        idx = int(torch.searchsorted(from_top, torch.tensor(k)))
        self._bucket = _BUCKETS - 1 - idx
        self._above = int(from_top[idx - 1]) if idx > 0 else 0
        self._k = k
        return self._bucket

    def add_boundary(self, delta: Tensor) -> None:
        """Keep the magnitudes of one tensor that fall in the boundary bucket (pass 2)."""
        if self._bucket is None:
            return
        a = delta.abs().float().reshape(-1)
        sel = a[_bucket(a) == self._bucket]
        if sel.numel():
            self._values.append(sel)

    def threshold(self) -> float:
        """The exact k-th largest magnitude (entries ``≥`` it are kept); 0.0 when all are kept."""
        if self._bucket is None:
            return 0.0
        vals = torch.cat(self._values) if self._values else torch.zeros(0)
        need = self._k - self._above  # how many of the boundary bucket's values are kept
        if vals.numel() < need or need < 1:
            raise RuntimeError("magnitude threshold: the second pass did not see the tensors of the first")
        return float(torch.sort(vals, descending=True).values[need - 1])

    def median(self) -> float:
        """The median magnitude, to the bucket's resolution (its lower edge; about 0.8% relative)."""
        if self.total == 0:
            return 0.0
        idx = int(torch.searchsorted(self.counts.cumsum(0), torch.tensor((self.total + 1) // 2)))
        return float(torch.tensor([idx << 16], dtype=torch.int32).view(torch.float32))
