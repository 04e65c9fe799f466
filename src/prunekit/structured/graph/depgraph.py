"""Dependency graph: which slices of which tensors must be removed together.

The graph is built by running the model once on example inputs (:mod:`prunekit.structured.graph.recorder`)
while every activation carries *channel labels*: each channel a Conv / Linear / Embedding produces
gets a slot id, and the operations in between carry, concatenate, split or merge those ids. Slots
that meet in a residual add, a gate, a ``chunk``, a norm group or a shared weight are united
(union-find); the united sets are the coupled channels of DepGraph (Fang et al., 2023, "DepGraph:
Towards Any Structural Pruning"). A *member* is one dimension of one parameter or buffer (``dim`` 0
of a Linear weight: its outputs; ``dim`` 1: its inputs; ``dim`` 0 of a layer-scale vector, of a
position embedding's width, …) together with the slot of each of its positions, so removal slices
tensors, not modules, and a tensor shared by two modules is cut once, the same way for both.

Slots the recorder cannot follow exactly (a slice of the channel dimension, a graph output, an
operation it does not know) are *pinned* — never removed — and each pin keeps the reason, so the
call can say what held the model back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn


class UnsupportedOperation(NotImplementedError):
    """The dependency graph met an operation whose effect on channels it does not know (``strict=True``)."""


@dataclass
class Val:
    """Channel labels of one activation: ``labels`` has one axis per tracked tensor dimension ``dims``.

    A plain channel dimension is 1-D. A channel dimension split into (heads, head_dim) or (groups,
    channels per group) becomes a block with several axes; only the ``free`` axis may lose positions
    (the others keep their size, and positions along them are united), so a split always stays a
    product and can be merged back after pruning.
    """

    labels: np.ndarray
    dims: tuple[int, ...]
    free: int = 0

    @property
    def dim(self) -> int:
        return self.dims[0]

    @property
    def flat(self) -> bool:
        return len(self.dims) == 1


@dataclass
class PVal:
    """A tensor computed from parameters only, by view-like or elementwise operations: each source is a
    parameter name and, for every dimension of this tensor, the parameter dimension it runs along (or
    ``None``). When it meets an activation, each source becomes a member along its mapped dimension."""

    sources: tuple[tuple[str, tuple[int | None, ...]], ...]


@dataclass
class PCat:
    """Parameters concatenated along ``dim`` (BEiT's ``cat(q_bias, zeros, v_bias)``): ``parts`` holds
    (start, stop, PVal) for each piece, so a bias built this way can still be cut piece by piece."""

    dim: int
    parts: tuple[tuple[int, int, PVal], ...]


@dataclass
class Member:
    """One dimension ``dim`` of the tensor ``tensor`` (a parameter or buffer name), the module that owns it
    (``name``) and the slot of each of its positions. ``role`` is for people: ``out``, ``in``, ``dw``
    (a depthwise conv's outputs), ``norm``, ``embed`` or ``param``."""

    tensor: str
    dim: int
    name: str
    role: str
    labels: np.ndarray
    module: nn.Module | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.tensor, self.dim)


@dataclass
class AttrFix:
    """An integer attribute of a module that equals the size of a tracked dimension in a reshape it
    issued (``self.head_dim``, ``self.hidden_dim``), or entry ``index`` of a shape tuple it passed
    (``x.view(self.shape)``): after removal it is set to the kept count along ``labels`` (or along
    the member ``member``, a ``(tensor, dim)`` key)."""

    module: str
    attr: str
    labels: np.ndarray | None = None
    member: tuple[str, int] | None = None
    index: int | None = None


@dataclass
class DependencyGraph:
    """Slots, their union-find, the pinned slots (with reasons) and the members that hold per-channel weights."""

    parent: list[int] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)
    members: dict[tuple[str, int], Member] = field(default_factory=dict)
    produced: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    attr_fixes: list[AttrFix] = field(default_factory=list)
    ambiguous_attrs: set[tuple[str, str]] = field(default_factory=set)
    refs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    ops: int = 0
    version: int = 0
    _frozen: np.ndarray | None = None
    _frozen_at: int = -1
    log: list = field(default_factory=list)
    output_shapes: list = field(default_factory=list)
    module_inputs: dict[str, list] = field(default_factory=dict)
    multiple_of: dict[int, int] = field(default_factory=dict)  # slot -> width granularity a kernel needs

    def new_slots(self, n: int, pinned: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.version += 1
        if pinned:
            for s in range(start, start + n):
                self.pinned[s] = pinned
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        if a.shape != b.shape:
            raise ValueError(f"cannot unite {a.shape} slots with {b.shape} slots")
        for x, y in zip(a.tolist(), b.tolist()):
            if x == y:
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                self.version += 1

    def unite_along(self, labels: np.ndarray, keep_axis: int) -> None:
        """Unite the slots of ``labels`` that share their index along ``keep_axis`` (the same channel of
        every group / head goes together)."""
        moved = np.moveaxis(labels, keep_axis, -1).reshape(-1, labels.shape[keep_axis])
        for row in moved[1:]:
            self.union(moved[0], row)

    def pin(self, labels: np.ndarray | None, reason: str) -> None:
        if labels is None:
            return
        for x in np.asarray(labels).ravel().tolist():
            self.pinned.setdefault(int(x), reason)

    def add_member(self, tensor: str, dim: int, name: str, role: str, labels: np.ndarray,
                   module: nn.Module | None = None) -> None:
        key = (tensor, dim)
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if key in self.members:  # a tensor used twice (a module called twice, a shared weight): one cut
            old = self.members[key]
            if len(old.labels) != len(labels):
                self.pin(old.labels, f"{tensor} is used with two different widths")
                self.pin(labels, f"{tensor} is used with two different widths")
                return
            self.union(old.labels, labels)
        else:
            self.members[key] = Member(tensor, dim, name, role, labels, module)

    def all_roots(self) -> np.ndarray:
        """The root of every slot (computed once per change of the union-find, by vectorized pointer jumping)."""
        if self._frozen is None or self._frozen_at != self.version:
            par = np.asarray(self.parent, dtype=np.int64)
            while True:
                nxt = par[par]
                if np.array_equal(nxt, par):
                    break
                par = nxt
            self._frozen, self._frozen_at = par, self.version
        return self._frozen

    def removed_mask(self, removed: set[int]) -> np.ndarray:
        """A boolean per slot: whether its unit (root) is in ``removed``."""
        mask = np.zeros(len(self.parent), dtype=bool)
        if removed:
            mask[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
        return mask[self.all_roots()]

    def roots(self, labels: np.ndarray) -> np.ndarray:
        flat = np.asarray(labels, dtype=np.int64).ravel()
        return self.all_roots()[flat] if len(flat) else flat

    def pinned_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        if not self.pinned:
            return out
        slots = np.fromiter(self.pinned, dtype=np.int64, count=len(self.pinned))
        for s, r in zip(slots.tolist(), self.roots(slots).tolist()):
            out.setdefault(r, self.pinned[s])
        return out
