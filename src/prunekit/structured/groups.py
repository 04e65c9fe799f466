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
    each, e.g. channel i of every layer in a residual stage); ``where`` maps each member's key
    ``(tensor, dim)`` to the positions of each unit in it."""

    members: list[Member]
    units: list[int]
    where: dict[tuple[str, int], dict[int, np.ndarray]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The modules that hold the group's tensors."""
        return sorted({m.name for m in self.members})

    @property
    def roles(self) -> set[tuple[str, str]]:
        """``(module, role)`` pairs, e.g. ``("layer1.0.conv1", "out")``."""
        return {(m.name, m.role) for m in self.members}

    def positions(self, module: str, role: str) -> dict[int, np.ndarray]:
        """Positions of each unit in the tensor that plays ``role`` in ``module`` (its weight when it has one)."""
        keys = [m.key for m in self.members if m.name == module and m.role == role]
        keys.sort(key=lambda k: (not k[0].endswith(".weight"), k))
        if not keys:
            raise KeyError(f"{module!r} has no {role!r} member in this group")
        return self.where[keys[0]]

    def __len__(self) -> int:
        return len(self.units)


def find_groups(graph: DependencyGraph) -> list[Group]:
    """The prunable groups: units with the same set of members form one group; pinned units are left out."""
    pinned = graph.pinned_roots()
    positions: dict[int, dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
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


def keep_count(n: int, sparsity: float, round_to: int | None = None) -> int:
    """How many of ``n`` units stay when ``sparsity`` of them go: at least one (or ``round_to``)."""
    keep = n - math.floor(n * sparsity + 1e-9)
    if round_to:
        keep = min(n, max(round_to, int(round(keep / round_to)) * round_to))
    return max(1, keep)


def choose_removed(groups: list[Group], scores: list[torch.Tensor], sparsity: float, *, global_pruning: bool = False,
                   round_to: int | None = None) -> set[int]:
    """Units to remove: the lowest-scoring ``sparsity`` of each group (or, globally, of all units after
    dividing each group's scores by their mean), keeping at least one unit (or ``round_to``) per group."""
    removed: set[int] = set()
    if sparsity <= 0:
        return removed
    if not global_pruning:
        for g, s in zip(groups, scores):
            keep = keep_count(len(g), sparsity, round_to)
            order = torch.argsort(s, stable=True)  # ascending: least important first
            removed.update(g.units[i] for i in order[: len(g) - keep].tolist())
        return removed
    normed = [s / s.mean().clamp_min(1e-12) for s in scores]
    flat = torch.cat(normed)
    n_remove = math.floor(len(flat) * sparsity + 1e-9)
    if n_remove == 0:
        return removed
    threshold = torch.sort(flat, stable=True).values[n_remove - 1]
    for g, s in zip(groups, normed):
        below = (s <= threshold).nonzero().flatten()
        keep = max(len(g) - len(below), 1)
        keep = keep_count(len(g), 1 - keep / len(g), round_to)
        order = torch.argsort(s, stable=True)
        removed.update(g.units[i] for i in order[: len(g) - keep].tolist())
    return removed
