"""Sparsifying one delta tensor: DARE's random drop, magnitude trimming, DELLA's MAGPRUNE, and the
generator each tensor draws from.

Randomness is per tensor: :func:`tensor_generator` derives a CPU generator from the seed, the model's
position and the tensor's name, so a merge is the same on any machine, in any order of tensors, and
whether one tensor or all of them are merged.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def tensor_generator(seed: int, model_index: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, model_index, name)`` by SHA-256 (stable across runs and machines)."""
    digest = hashlib.sha256(f"prunekit-merge:{int(seed)}:{int(model_index)}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _uniform(shape: torch.Size, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float32)


def l1_rescale(original: Tensor, kept: Tensor, eps: float = 1e-7) -> Tensor:
    """``kept`` scaled so that its L1 norm equals ``original``'s (mergekit's ``rescale``); unchanged when
    either norm is below ``eps``."""
    before, after = original.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def dare(delta: Tensor, density: float, gen: torch.Generator, rescale: str | None = "exact") -> Tensor:
    """DARE: drop each entry with probability ``1 − density``; rescale the survivors by ``1/density``
    (``rescale="exact"``, the paper), to the original L1 norm (``"l1"``, mergekit), or not (None)."""
    if density >= 1:
        return delta
    keep = _uniform(delta.shape, gen) < density
    out = delta * keep
    if rescale == "exact":
        out = out / density
    elif rescale == "l1":
        out = l1_rescale(delta, out)
    return out


def della(delta: Tensor, keep_lo: float, keep_hi: float, gen: torch.Generator, rescale: str | None = "exact") -> Tensor:
    """DELLA's MAGPRUNE: within each row (the last dimension: one output neuron's weights), rank entries by
    magnitude and keep each with a probability that rises linearly from ``keep_lo`` (smallest) to ``keep_hi``
    (largest); rescale each survivor by the inverse of its own keep probability (``"exact"``, the paper) or to
    the original L1 norm (``"l1"``, mergekit)."""
    shape = delta.shape
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(-1, shape[-1])
    n = rows.shape[1]
    # rank 0 = smallest magnitude; stable so equal magnitudes rank by position
    order = torch.sort(rows.abs().float(), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n).expand_as(order).contiguous())
    frac = ranks.float() / max(n - 1, 1)
    keep_p = keep_lo + (keep_hi - keep_lo) * frac
    keep = _uniform(rows.shape, gen) < keep_p
    out = rows * keep
    if rescale == "exact":
        out = torch.where(keep, out / keep_p.clamp_min(1e-12), out)
    elif rescale == "l1":
        out = l1_rescale(rows, out)
    return out.reshape(shape)


def elect_and_merge(deltas: list[Tensor], weights: list[float], *, weighted_election: bool, mean: bool) -> Tensor:
    """TIES' sign election and disjoint merge.

    Each entry's sign is the sign of the summed deltas (weighted by ``weights`` when ``weighted_election``,
    as mergekit does; unweighted, as the paper does); the entries of the models that agree with it (non-zero,
    same sign) are combined: their weighted mean (``mean``, the paper's disjoint mean) or their weighted sum.
    """
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
    weighted = stacked * w
    votes = weighted.sum(0) if weighted_election else stacked.sum(0)
    if weighted_election:  # mergekit: ties go to +
        sign = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    else:
        sign = torch.sign(votes)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (weighted * agree).sum(0)
    if not mean:
        return total
    norm = (w * agree).sum(0)
    return torch.where(norm != 0, total / torch.where(norm != 0, norm, torch.ones_like(norm)), torch.zeros_like(total))
