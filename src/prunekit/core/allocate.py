"""Allocation: how a target sparsity is spread over the layers in scope.

Each allocation takes the per-layer scores (higher = more important, ``-inf`` = already pruned) and
a target sparsity, and returns how many weights each layer should lose. The total is the target to
within one weight per layer.

- ``uniform``: every layer at the target sparsity.
- ``global``: one threshold on the scores across all layers.
- ``global_floor``: global, but no layer loses more than ``1 - floor`` of its weights
  (the fix for layer collapse; ``floor`` defaults to 0.02).
- ``erk``: Erdős–Rényi-kernel densities, ∝ (sum of dims) / (product of dims), as sparse-training papers use.
- ``lamp``: global ranking on layer-adaptive magnitude scores, u² / Σ_{v ≥ u} v² (Lee et al., 2021).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from .deprecation import renamed_args
from .fraction import check_fraction
from .registry import Registry

Allocation = Callable[..., dict[str, int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


@renamed_args(method="allocation")
def allocate(scores: Mapping[str, Tensor], sparsity: float, allocation: str = "uniform", **options) -> dict[str, int]:
    """Number of weights each layer should prune so that the total sparsity is ``sparsity``, spread by
    the registered ``allocation`` (``method=`` is its deprecated name)."""
    fn = ALLOCATIONS.get(allocation)
    sparsity = check_fraction(sparsity, "sparsity")
    return fn(dict(scores), sparsity, **options)


def _total(scores: Mapping[str, Tensor]) -> int:
    return sum(s.numel() for s in scores.values())


@ALLOCATIONS.register("uniform")
def uniform(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, int]:
    """Every layer at the same sparsity."""
    return {name: round(sparsity * s.numel()) for name, s in scores.items()}


def _global_counts(pools: Mapping[str, Tensor], k: int) -> dict[str, int]:
    """How many of each pool's entries are among the ``k`` lowest of all pools (ties: earlier pools first)."""
    names = list(pools)
    if k <= 0:
        return {n: 0 for n in names}
    pools = {n: pools[n].detach().reshape(-1).float().cpu() for n in names}
    threshold = torch.kthvalue(torch.cat([pools[n] for n in names]), k).values
    below = {n: int((pools[n] < threshold).sum()) for n in names}
    left = k - sum(below.values())
    counts = {}
    for n in names:
        ties = int((pools[n] == threshold).sum())
        take = min(ties, max(left, 0))
        left -= take
        counts[n] = below[n] + take
    return counts


@ALLOCATIONS.register("global")
def global_(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, int]:
    """One threshold across all layers: the lowest-scoring weights anywhere go first."""
    return _global_counts(scores, round(sparsity * _total(scores)))


@ALLOCATIONS.register("global_floor")
def global_floor(scores: Mapping[str, Tensor], sparsity: float, floor: float = 0.02) -> dict[str, int]:
    """Global ranking, but every layer keeps at least ``floor`` of its weights."""
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    k = round(sparsity * _total(scores))
    caps = {n: math.floor((1 - floor) * s.numel()) for n, s in scores.items()}
    if k > sum(caps.values()):
        raise ValueError(
            f"sparsity {sparsity} is unreachable when every layer keeps {floor:.0%} of its weights "
            f"(at most {sum(caps.values()) / _total(scores):.4f}); lower the floor or the sparsity"
        )
    # Only a layer's `cap` lowest entries can be pruned; rank those candidates globally.
    pools = {n: torch.topk(s.reshape(-1).float(), caps[n], largest=False).values for n, s in scores.items()}
    return _global_counts(pools, k)


def erk_densities(shapes: Mapping[str, tuple[int, ...]], density: float, power: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi(-kernel) densities whose weighted mean is ``density``; layers that would exceed 1 stay dense."""
    raw = {n: (sum(sh) / math.prod(sh)) ** power for n, sh in shapes.items()}
    numel = {n: math.prod(sh) for n, sh in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in raw if n not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        over = [n for n in raw if n not in dense and eps * raw[n] > 1]
        if not over:
            break
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in raw}


@ALLOCATIONS.register("erk")
def erk(scores: Mapping[str, Tensor], sparsity: float, power: float = 1.0) -> dict[str, int]:
    """Erdős–Rényi-kernel allocation: small layers stay denser than large ones."""
    dens = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, 1 - sparsity, power)
    return {n: s.numel() - round(dens[n] * s.numel()) for n, s in scores.items()}


def lamp_scores(score: Tensor) -> Tensor:
    """LAMP: u² / Σ_{v ≥ u} v² within one layer (already-pruned ``-inf`` entries stay ``-inf``)."""
    flat = score.reshape(-1).double()
    pruned = torch.isneginf(flat)
    if bool((flat[~pruned] < 0).any()):
        raise ValueError("lamp allocation needs non-negative scores (e.g. magnitude, snip, taylor)")
    sq = torch.where(pruned, torch.zeros_like(flat), flat) ** 2
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    out = torch.empty_like(sq)
    out[order] = sorted_sq / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    out[pruned] = -math.inf
    return out.reshape(score.shape)


@ALLOCATIONS.register("lamp")
def lamp(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, int]:
    """Global ranking on LAMP scores (layer-adaptive magnitude-based pruning)."""
    return global_({n: lamp_scores(s) for n, s in scores.items()}, sparsity)
