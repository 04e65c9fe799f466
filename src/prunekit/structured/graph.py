"""Dependency graph: which channels of which layers must be removed together.

The model is traced with ``torch.fx.symbolic_trace`` and run once on the example inputs by an
interpreter that follows every tensor's *channel labels*: each channel a Conv/Linear produces gets a
slot id, and the ops in between carry, concatenate, slice or merge those ids. Slots that meet in a
residual add, a ``chunk`` or a GroupNorm group are united (union-find); the united sets are the
coupled channels of DepGraph (Fang et al., 2023, "DepGraph: Towards Any Structural Pruning").

Why torch.fx and not torch.export: fx keeps every ``nn.Module`` call as one ``call_module`` node with
the module attached, so a convolution's in/out channel roles are read off the module itself instead
of being re-derived from decomposed aten ops; it traces in milliseconds (the pruning call must be
fast); and a module fx cannot trace can be made a leaf (``ignore=[...]``), which keeps its channels
whole. torch.export decomposes modules into aten ops, specializes shapes, and is much slower.

Channels the interpreter cannot follow exactly (slices along the channel dimension, matmuls, a
reshape that splits channels into heads, graph inputs/outputs, parameters added to activations) are
*pinned*: never removed. An op it does not know at all raises :class:`UnsupportedOperation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn


class UnsupportedOperation(NotImplementedError):
    """The dependency graph met an operation whose effect on channels it does not know."""


@dataclass
class Val:
    """Channel labels of one tensor: slot ids along dimension ``dim`` (``None``: no tracked channels)."""

    labels: np.ndarray | None = None
    dim: int | None = None


@dataclass
class Member:
    """One place that holds per-channel weights: ``role`` is ``out`` (rows of a Conv/Linear), ``in``
    (its columns), ``dw`` (a depthwise conv's rows) or ``norm`` (a norm's per-channel vectors)."""

    name: str
    module: nn.Module
    role: str
    labels: np.ndarray


@dataclass
class DependencyGraph:
    """Slots, their union-find, the pinned slots and the members that hold per-channel weights."""

    parent: list[int] = field(default_factory=list)
    pinned: set[int] = field(default_factory=set)
    members: dict[tuple[str, str], Member] = field(default_factory=dict)

    def new_slots(self, n: int, pinned: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if pinned:
            self.pinned.update(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def pin(self, labels: np.ndarray | None) -> None:
        if labels is not None:
            self.pinned.update(int(x) for x in labels.tolist())

    def add_member(self, name: str, module: nn.Module, role: str, labels: np.ndarray) -> None:
        key = (name, role)
        if key in self.members:  # a module called twice: both calls must keep the same channels
            self.union(self.members[key].labels, labels)
        else:
            self.members[key] = Member(name, module, role, labels)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(x)) for x in labels), dtype=np.int64, count=len(labels))

    def pinned_roots(self) -> set[int]:
        return {self.find(x) for x in self.pinned}
