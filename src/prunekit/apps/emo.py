"""Evolutionary multi-objective layer-wise sparsity search, after "An EMO Joint Pruning with Multiple
Sub-networks: Fast and Effect" (2023): NSGA-II (Deb et al. 2002) over per-layer sparsities, two
objectives minimised together — a task error of the masked model (no fine-tuning) and its density (the
share of in-scope weights kept) — so one run returns a Pareto front of sub-networks, one per budget.

Each layer is pruned by magnitude to its own sparsity (:func:`masked_copy`, through
:func:`prunekit.core.pattern.mask_from_scores` and :func:`prunekit.core.mask.set_mask_`); the search
itself knows nothing of the model.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.mask import set_mask_, weight_of
from ..core.pattern import mask_from_scores, parse_pattern


def non_dominated_fronts(objectives: np.ndarray) -> list[np.ndarray]:
    """Indices of each Pareto front of ``objectives`` (n, m), all minimised: front 0 is dominated by no
    point, front 1 only by front 0's, and so on."""
    f = np.asarray(objectives, dtype=np.float64)
    if f.ndim != 2 or len(f) == 0:
        raise ValueError(f"objectives must be a non-empty (n, m) array, got shape {f.shape}")
    le = (f[:, None, :] <= f[None, :, :]).all(-1)
    lt = (f[:, None, :] < f[None, :, :]).any(-1)
    dominates = le & lt  # dominates[i, j]: i dominates j
    count = dominates.sum(0)
    fronts = []
    current = np.flatnonzero(count == 0)
    while len(current):
        fronts.append(current)
        count = count - dominates[current].sum(0)
        count[current] = -1
        current = np.flatnonzero(count == 0)
    return fronts


def crowding_distance(objectives: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within one front: per objective, the normalised gap
    between its two neighbours; the extremes get infinity."""
    f = np.asarray(objectives, dtype=np.float64)
    n, m = f.shape
    d = np.zeros(n)
    for j in range(m):
        order = np.argsort(f[:, j], kind="stable")
        span = f[order[-1], j] - f[order[0], j]
        d[order[0]] = d[order[-1]] = np.inf
        if span > 0 and n > 2:
            d[order[1:-1]] += (f[order[2:], j] - f[order[:-2], j]) / span
    return d


def hypervolume_2d(points: np.ndarray, reference: Sequence[float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (n, 2), minimised, up to ``reference``."""
    p = np.asarray(points, dtype=np.float64)
    p = p[(p[:, 0] < reference[0]) & (p[:, 1] < reference[1])]
    if len(p) == 0:
        return 0.0
    p = p[np.argsort(p[:, 0], kind="stable")]
    area, best_y = 0.0, reference[1]
    for i, (x, y) in enumerate(p):
        if y < best_y:
            nxt = reference[0]
            area += (nxt - x) * (best_y - y)
            best_y = y
    return float(area)


def masked_copy(model: nn.Module, layers: Sequence[str], sparsities: Sequence[float]) -> nn.Module:
    """A copy of ``model`` whose named ``layers`` each lose their smallest-magnitude weights to their own
    sparsity (the original is untouched)."""
    if len(layers) != len(sparsities):
        raise ValueError(f"{len(layers)} layers but {len(sparsities)} sparsities")
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    pattern = parse_pattern("unstructured")
    for name, s in zip(layers, sparsities):
        if not 0.0 <= float(s) < 1.0:
            raise ValueError(f"sparsity of {name} must be in [0, 1), got {s}")
        w = weight_of(modules[name])
        set_mask_(modules[name], mask_from_scores(w.abs(), pattern, int(float(s) * w.numel())))
    return out


@dataclass
class EMOResult:
    """The final population (per-layer sparsities), its objectives (error, density) and its Pareto front."""

    layers: list[str]
    sparsities: list[list[float]]
    objectives: list[list[float]]
    front: list[int] = field(default_factory=list)
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        pts = sorted((self.objectives[i][1], self.objectives[i][0]) for i in self.front)
        return f"EMO: {len(self.front)} Pareto points over {self.evaluations} evaluations; (density, error): " + \
            ", ".join(f"({d:.3f}, {e:.3f})" for d, e in pts)


def search_sparsities(model: nn.Module, layers: Sequence[str], error: Callable[[nn.Module], float], *,
                      population: int = 24, generations: int = 15, max_sparsity: float = 0.98,
                      mutation: float = 0.15, seed: int = 0) -> EMOResult:
    """NSGA-II over per-layer sparsities of ``layers`` (names in ``model``): objectives ``error(masked
    model)`` and density, both minimised. Returns the last population and its first front; ``model``
    is never changed."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules or not hasattr(modules[n], "weight")]
    if not layers or missing:
        raise ValueError(f"layers must name modules with weights in the model; not found: {missing or 'none given'}")
    if population < 4 or population % 2 or generations < 1:
        raise ValueError(f"population must be an even number >= 4 and generations >= 1, got {population}, {generations}")
    if not 0 < max_sparsity < 1:
        raise ValueError(f"max_sparsity must be in (0, 1), got {max_sparsity}")
    rng = np.random.default_rng(seed)
    sizes = np.array([weight_of(modules[n]).numel() for n in layers], dtype=np.float64)
    evals = 0

    def evaluate(pop: np.ndarray) -> np.ndarray:
        nonlocal evals
        out = []
        for s in pop:
            evals += 1
            density = float((sizes * (1 - s)).sum() / sizes.sum())
            with torch.no_grad():
                out.append([float(error(masked_copy(model, layers, s.tolist()))), density])
        return np.array(out)

    def select(f: np.ndarray, k: int) -> np.ndarray:
        chosen: list[int] = []
        for front in non_dominated_fronts(f):
            if len(chosen) + len(front) <= k:
                chosen += front.tolist()
            else:
                d = crowding_distance(f[front])
                chosen += front[np.argsort(-d, kind="stable")][: k - len(chosen)].tolist()
                break
        return np.array(chosen)

    pop = rng.uniform(0, max_sparsity, size=(population, len(layers)))
    fit = evaluate(pop)
    for _ in range(generations):
        ranks = np.empty(len(pop), dtype=int)
        for r, front in enumerate(non_dominated_fronts(fit)):
            ranks[front] = r
        children = []
        for _ in range(population // 2):
            a, b = (min(rng.choice(len(pop), 2, replace=False), key=lambda i: ranks[i]) for _ in range(2))
            cross = rng.random(len(layers)) < 0.5
            for x, y in ((pop[a], pop[b]), (pop[b], pop[a])):
                child = np.where(cross, x, y) + rng.normal(0, mutation, len(layers)) * (rng.random(len(layers)) < 0.5)
                children.append(np.clip(child, 0, max_sparsity))
        kids = np.array(children)
        both, both_fit = np.concatenate([pop, kids]), np.concatenate([fit, evaluate(kids)])
        keep = select(both_fit, population)
        pop, fit = both[keep], both_fit[keep]
    front = non_dominated_fronts(fit)[0]
    return EMOResult(list(layers), pop.tolist(), fit.tolist(), sorted(front.tolist()), evals)
