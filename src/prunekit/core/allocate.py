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
- ``pq``: each layer in proportion to its PQ-Index count (SAP, Diao et al., 2023); ``pq_index`` and ``sap_counts``
  are the index and the adaptive stop. ``rd_solve`` is the rate-distortion dynamic programme (Xu et al., 2023)
  that ``methods/rd.py`` feeds with measured output distortions.
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


def pq_index(weights: Tensor, p: float = 0.5, q: float = 1.0) -> float:
    """PQ Index (Diao et al., 2023, "Pruning Deep Neural Networks from a Sparsity Perspective"):
    I(w) = 1 − d^(1/q − 1/p) · ‖w‖_p / ‖w‖_q for 0 < p < q; 0 for a flat vector, near 1 for a sparse one."""
    if not 0 < p < q:
        raise ValueError(f"the PQ Index needs 0 < p < q; got p={p}, q={q}")
    w = weights.detach().reshape(-1).double().abs()
    d = w.numel()
    if d == 0 or float(w.max()) == 0:
        raise ValueError("the PQ Index of an empty or all-zero tensor is undefined")
    w = w / w.max()  # scale-free; keeps w^p in range
    norm_p = float(w.pow(p).sum()) ** (1 / p)
    norm_q = float(w.pow(q).sum()) ** (1 / q)
    return 1 - d ** (1 / q - 1 / p) * norm_p / norm_q


def sap_counts(scores: Mapping[str, Tensor], p: float = 0.5, q: float = 1.0, eta: float = 0.0, gamma: float = 1.0,
               beta: float = 0.9) -> dict[str, int]:
    """Sparsity-informed Adaptive Pruning's count per layer (Diao et al., 2023): with d the layer's remaining
    weights and I their PQ Index, keep at least r = d·(1+η)^(−q/(q−p))·(1−I)^(qp/(q−p)) and prune
    ⌊d·min(γ·(1 − r/d), β)⌋. Zero everywhere means the model is no longer compressible: SAP's stop."""
    out = {}
    for name, s in scores.items():
        flat = s.detach().reshape(-1).double()
        alive = flat[~torch.isneginf(flat)]
        if bool((alive < 0).any()):
            raise ValueError("sap/pq allocation needs non-negative scores (e.g. magnitude)")
        d = alive.numel()
        if d == 0 or float(alive.max()) == 0:
            out[name] = 0
            continue
        index = pq_index(alive, p, q)
        r = d * (1 + eta) ** (-q / (q - p)) * (1 - index) ** (q * p / (q - p))
        out[name] = math.floor(d * min(gamma * (1 - r / d), beta) + 1e-9)
    return out


@ALLOCATIONS.register("pq")
def pq(scores: Mapping[str, Tensor], sparsity: float, p: float = 0.5, q: float = 1.0) -> dict[str, int]:
    """Each layer prunes in proportion to SAP's PQ-Index count (the more compressible a layer, the more it loses),
    scaled so the total is the target; layers SAP finds incompressible lose nothing unless the target needs it."""
    k = round(sparsity * _total(scores))
    sap = sap_counts(scores, p, q, beta=1.0)
    room = {n: int((~torch.isneginf(s)).sum()) for n, s in scores.items()}
    done = {n: int(torch.isneginf(s).sum()) for n, s in scores.items()}
    need = k - sum(done.values())
    if need <= 0:
        return dict(done)
    if sum(sap.values()) == 0:  # no layer is compressible by its PQ Index: nothing to tell them apart
        return uniform(scores, sparsity)
    want = {n: sap[n] * need / sum(sap.values()) for n in scores}
    counts = {n: min(room[n], math.floor(want[n])) for n in scores}
    for n in sorted(scores, key=lambda n: want[n] - math.floor(want[n]), reverse=True):  # largest remainders
        if sum(counts.values()) >= need:
            break
        if counts[n] < room[n]:
            counts[n] += 1
    left = need - sum(counts.values())
    for n in scores:  # a layer capped at its size hands the rest on
        take = min(left, room[n] - counts[n])
        counts[n] += take
        left -= take
    return {n: done[n] + counts[n] for n in scores}


def rd_solve(curves: Mapping[str, list[tuple[int, float]]], k: int, units: int = 1000) -> dict[str, int]:
    """Per-layer prune counts minimising the summed distortion Σ D_l(c_l) subject to Σ c_l ≥ ``k``, by dynamic
    programming over the layers (Xu et al., 2023, "Efficient Joint Optimization of Layer-Adaptive Weight
    Pruning": output distortion is additive over layers, so the joint choice decomposes). ``curves`` gives each
    layer's options as (pruned count, distortion), one with count 0; counts are bucketed into ``units`` steps of
    the total for the table, and a chosen surplus over ``k`` is handed back from the layers with the most pruned."""
    names = list(curves)
    for n in names:
        if not any(c == 0 for c, _ in curves[n]):
            raise ValueError(f"the distortion curve of {n} needs an option that prunes nothing (count 0)")
    total = sum(max(c for c, _ in curves[n]) for n in names)
    if k > total:
        raise ValueError(f"no choice of the curves' options prunes {k} weights (at most {total}); extend the grid")
    if k <= 0:
        return {n: 0 for n in names}
    step = max(1, math.ceil(total / units))
    goal = math.ceil(k / step)
    inf = float("inf")
    best = [0.0] + [inf] * goal  # best[u]: least distortion reaching ≥ u units with the layers so far
    choice: list[list[int]] = []
    for n in names:
        new = [inf] * (goal + 1)
        pick = [-1] * (goal + 1)
        for u in range(goal + 1):
            if best[u] == inf:
                continue
            for i, (c, dist) in enumerate(curves[n]):
                v = min(goal, u + c // step)
                if best[u] + dist < new[v]:
                    new[v], pick[v] = best[u] + dist, i * (goal + 1) + u
        best = new
        choice.append(pick)
    if best[goal] == inf:
        raise ValueError(f"the curves cannot reach {k} pruned weights at a resolution of {step}; raise units")
    counts: dict[str, int] = {}
    u = goal
    for n, pick in zip(reversed(names), reversed(choice)):
        i, u = divmod(pick[u], goal + 1)
        counts[n] = curves[n][i][0]
    counts = {n: counts[n] for n in names}
    surplus = sum(counts.values()) - k
    for n in sorted(names, key=lambda n: -counts[n]):
        take = min(surplus, counts[n])
        counts[n] -= take
        surplus -= take
    return counts
