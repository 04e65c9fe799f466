"""Coupled channel groups read off a :class:`DependencyGraph`, and the choice of what to remove."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from ...core.fraction import keep_count
from .depgraph import DependencyGraph, Member


@dataclass(eq=False)
class Group:
    """Channels that rise and fall together: ``units`` are the union-find roots (one removable unit
    each, e.g. channel i of every layer in a residual stage); ``roots_of`` gives, for each member's key
    ``(tensor, dim)``, the unit of each of its positions, and :attr:`where` the positions of each unit."""

    members: list[Member]
    units: list[int]
    roots_of: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _where: dict | None = field(default=None, repr=False)

    @property
    def where(self) -> dict[tuple[str, int], dict[int, np.ndarray]]:
        if self._where is None:
            units = set(self.units)
            self._where = {}
            for key, r in self.roots_of.items():
                d: dict[int, list[int]] = defaultdict(list)
                for pos, u in enumerate(r.tolist()):
                    if u in units:
                        d[u].append(pos)
                self._where[key] = {u: np.asarray(p) for u, p in d.items()}
        return self._where

    def unit_index(self, key: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(positions of member ``key`` that belong to this group, the index of their unit in ``units``)."""
        r = self.roots_of[key]
        units = np.asarray(self.units, dtype=np.int64)
        idx = np.searchsorted(units, r)
        ok = (idx < len(units)) & (units[np.minimum(idx, len(units) - 1)] == r)
        return np.nonzero(ok)[0], idx[ok]

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
    pinned = set(graph.pinned_roots())
    keys = list(graph.members)
    per_key = [graph.roots(graph.members[k].labels) for k in keys]
    owners: dict[int, list[int]] = defaultdict(list)  # root -> indices of the members it appears in
    for ki, roots in enumerate(per_key):
        for r in np.unique(roots).tolist():
            owners[r].append(ki)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for root, kis in owners.items():
        if root not in pinned:
            by_signature[tuple(kis)].append(root)
    groups = []
    for signature, roots in by_signature.items():
        roots.sort()
        g = Group([graph.members[keys[ki]] for ki in signature], roots)
        g.roots_of = {keys[ki]: per_key[ki] for ki in signature}
        groups.append(g)
    groups.sort(key=lambda g: g.units[0])
    return groups


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
