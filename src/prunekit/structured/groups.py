"""Coupled channel groups read off a :class:`DependencyGraph`, and the choice of what to remove."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from .graph import DependencyGraph, Member


@dataclass
class Group:
    """Channels that rise and fall together: ``units`` are the union-find roots (one removable unit
    each, e.g. channel i of every layer in a residual stage); ``where`` maps each member to the
    positions of each unit in it."""

    members: list[Member]
    units: list[int]
    where: dict[tuple[str, str], dict[int, np.ndarray]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted({m.name for m in self.members})

    def __len__(self) -> int:
        return len(self.units)


def find_groups(graph: DependencyGraph) -> list[Group]:
    """The prunable groups: units with the same set of members form one group; pinned units are left out."""
    pinned = graph.pinned_roots()
    positions: dict[int, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(list))
    for key, m in graph.members.items():
        for pos, root in enumerate(graph.roots(m.labels).tolist()):
            positions[root][key].append(pos)
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for root, where in positions.items():
        if root not in pinned:
            by_signature[tuple(sorted(where))].append(root)
    groups = []
    for signature, roots in by_signature.items():
        roots.sort()
        g = Group([graph.members[k] for k in signature], roots)
        g.where = {k: {r: np.asarray(positions[r][k]) for r in roots} for k in signature}
        groups.append(g)
    groups.sort(key=lambda g: g.units[0])
    return groups


def _keep_count(n: int, ratio: float, round_to: int | None) -> int:
    keep = n - math.floor(n * ratio + 1e-9)
    if round_to:
        keep = min(n, max(round_to, int(round(keep / round_to)) * round_to))
    return max(1, keep)


def choose_removed(groups: list[Group], scores: list[torch.Tensor], ratio: float, *, global_pruning: bool = False,
                   round_to: int | None = None) -> set[int]:
    """Units to remove: the lowest-scoring ``ratio`` of each group (or, globally, of all units after
    dividing each group's scores by their mean), keeping at least one unit (or ``round_to``) per group."""
    removed: set[int] = set()
    if ratio <= 0:
        return removed
    if not global_pruning:
        for g, s in zip(groups, scores):
            keep = _keep_count(len(g), ratio, round_to)
            order = torch.argsort(s, stable=True)  # ascending: least important first
            removed.update(g.units[i] for i in order[: len(g) - keep].tolist())
        return removed
    normed = [s / s.mean().clamp_min(1e-12) for s in scores]
    flat = torch.cat(normed)
    n_remove = math.floor(len(flat) * ratio + 1e-9)
    if n_remove == 0:
        return removed
    threshold = torch.sort(flat, stable=True).values[n_remove - 1]
    for g, s in zip(groups, normed):
        below = (s <= threshold).nonzero().flatten()
        keep = max(len(g) - len(below), 1)
        keep = _keep_count(len(g), 1 - keep / len(g), round_to)
        order = torch.argsort(s, stable=True)
        removed.update(g.units[i] for i in order[: len(g) - keep].tolist())
    return removed
