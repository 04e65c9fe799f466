"""The check that a pruned model runs as predicted, and which group to blame when it does not.

The recording (:mod:`.recorder`) logged every torch call of the forward pass with the labels of its
outputs, so the shape of every intermediate tensor of the pruned model is known in advance: along a
tracked dimension, the number of kept channels; elsewhere, unchanged. The check runs the pruned
copy under a mode that compares each call's output shapes with that prediction, so a reshape whose
size was a constant (``x.view(B, 768, -1)``), a head split by a stored ``head_dim`` or an inferred
``-1`` that would quietly regroup heads is caught at the call where it happens — not only when the
model crashes, and not only at the output. The labels of that call's inputs name the channel groups
responsible; those groups are pinned and the plan is made again.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable

import numpy as np
from torch import nn
from torch.overrides import TorchFunctionMode

from .depgraph import DependencyGraph, PVal, Val
from .groups import Group
from .recorder import SKIP, Call, _outputs, op_name, size_args


class Mismatch(BaseException):
    """The pruned model diverged from the prediction at one call (a BaseException, so that model code
    which catches ``Exception`` for its own fallbacks cannot swallow it)."""

    def __init__(self, index: int, call: Call | None, message: str, sizes: tuple | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.call = call
        self.message = message
        self.sizes = sizes  # the pruned run's sizes, when the call was a view / reshape


class Kept:
    """Kept counts of label arrays under one removal plan (cached by array identity)."""

    def __init__(self, graph: DependencyGraph, removed: set[int]) -> None:
        self.graph = graph
        self.removed = removed
        self.gone = graph.removed_mask(removed)
        self.cache: dict[Any, int] = {}

    def count(self, labels: np.ndarray, key: Any = None) -> int:
        """Kept positions of ``labels``; ``key`` caches the count (an object that lives as long as the array)."""
        if key is not None and key in self.cache:
            return self.cache[key]
        n = int((~self.gone[np.asarray(labels, dtype=np.int64).ravel()]).sum())
        if key is not None:
            self.cache[key] = n
        return n


def _line(v: Val) -> np.ndarray:
    if v.labels.ndim == 1:
        return v.labels
    idx: list[Any] = [0] * v.labels.ndim
    idx[v.free] = slice(None)
    return v.labels[tuple(idx)]


def expected_shape(kept: Kept, shape: tuple[int, ...], spec: Any) -> tuple[int, ...] | None:
    """The shape the pruned model's tensor must have, or None when it is not predicted."""
    if spec is SKIP:
        return None
    if spec is None:
        return shape
    out = list(shape)
    if isinstance(spec, Val):
        out[spec.dims[spec.free]] = kept.count(_line(spec), (id(spec.labels), spec.free))
        return tuple(out)
    if isinstance(spec, PVal):
        for d in range(len(out)):
            for pname, dmap in spec.sources:
                pd = dmap[d] if d < len(dmap) else None
                m = kept.graph.members.get((pname, pd)) if pd is not None else None
                if m is not None:
                    out[d] = kept.count(m.labels, (id(m.labels), 0))
        return tuple(out)
    return None


class ShapeChecker(TorchFunctionMode):
    """Runs the pruned model, comparing each call's output shapes with the recording's prediction."""

    def __init__(self, graph: DependencyGraph, removed: set[int]) -> None:
        super().__init__()
        self.log = graph.log
        self.kept = Kept(graph, removed)
        self.i = 0
        self.lost = False

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        i = self.i
        self.i += 1
        call = self.log[i] if not self.lost and i < len(self.log) else None
        sizes = size_args(args) if call is not None and call.sizes is not None else None
        try:
            result = func(*args, **(kwargs or {}))
        except Exception as exc:
            raise Mismatch(i, call, f"{type(exc).__name__}: {exc}", sizes) from exc
        if call is None:
            return result
        if op_name(func) != call.name:
            self.lost = True  # the forward took another path (a cache, a size-dependent branch): stop predicting
            return result
        outs = _outputs(result)
        if len(outs) != len(call.outputs):
            self.lost = True
            return result
        for o, (shape, spec) in zip(outs, call.outputs):
            exp = expected_shape(self.kept, shape, spec)
            if exp is not None and tuple(o.shape) != exp:
                raise Mismatch(i, call, f"{call.name} in {call.where!r} gave a tensor of shape {tuple(o.shape)} where "
                                        f"{exp} was expected", sizes)
        return result


def tie_sizes(graph: DependencyGraph, mismatch: Mismatch, kept: Kept) -> bool:
    """A reshape whose size moved with another tensor's width (``qkv.reshape(B, N, 3, H, C // H)``,
    ``x.reshape(B, N, C)`` with C the block's input width): unite the reshaped channels with that
    tensor's, position by position, so the two widths shrink together. True when a tie was made."""
    call = mismatch.call
    if call is None or call.sizes is None or mismatch.sizes is None or len(call.sizes) != len(mismatch.sizes):
        return False
    spec = call.outputs[0][1] if call.outputs else None
    if not isinstance(spec, Val):
        return False
    k = spec.dims[spec.free]
    old, new = call.sizes[k], mismatch.sizes[k]
    if not isinstance(old, int) or not isinstance(new, int) or old == new or old <= 1:
        return False
    line = _line(spec)
    path = call.where
    while True:
        for src in _widths_in(graph, path, mismatch.index):
            n = len(src.labels)
            if n % old or kept.count(src.labels) // (n // old) != new:
                continue
            block = src.labels.reshape(n // old, old)
            tied = all(np.array_equal(graph.roots(row), graph.roots(line)) for row in block)
            if tied:
                continue
            graph.unite_along(block, 1)
            graph.union(block[0], line)
            return True
        if not path or path == "(top-level forward)":
            return False
        path = path.rpartition(".")[0]


def _widths_in(graph: DependencyGraph, path: str, before: int) -> list[Val]:
    """The flat channel labels a reshape in module ``path`` may have taken a size from: the module's inputs,
    then the tensors made inside it (its submodules included) before the reshape, latest first (diffusers' attention sizes every
    head by ``key.shape[-1] // heads``, also the value's)."""
    out = list(graph.module_inputs.get(path, []))
    seen = {id(v.labels) for v in out}
    top = not path or path == "(top-level forward)"
    for call in reversed(graph.log[:before]):
        if not (top or call.where == path or call.where.startswith(path + ".")):
            continue
        for _, spec in call.outputs:
            if isinstance(spec, Val) and spec.flat and id(spec.labels) not in seen:
                seen.add(id(spec.labels))
                out.append(spec)
    return out


def light_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares the parameters and buffers (removal replaces tensors, never
    changes them in place, so the original stays untouched)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _shapes(out: Any) -> list[tuple[int, ...]]:
    from .recorder import _tensors

    return [tuple(t.shape) for t in _tensors(out)]


def run_checked(trial: nn.Module, call: Callable[[nn.Module], Any], graph: DependencyGraph, removed: set[int],
                reference: list[tuple[int, ...]]) -> Mismatch | None:
    """Run ``call(trial)`` under the shape check; the first divergence, or None when all went as predicted."""
    checker = ShapeChecker(graph, removed)
    try:
        with checker:
            out = call(trial)
    except Mismatch as m:
        return m
    except Exception as exc:  # raised outside any torch call
        return Mismatch(checker.i, None, f"{type(exc).__name__}: {exc}")
    got = _shapes(out)
    if got != reference:
        return Mismatch(checker.i, None, f"the model's outputs have shapes {got}, not {reference}")
    return None


def blamed_groups(graph: DependencyGraph, removed: set[int], call: Call | None, groups: list[Group],
                  unit_group: dict[int, int]) -> list[Group]:
    """The groups whose removed units flow into (or out of) the call that diverged."""
    if call is None:
        return []
    units: set[int] = set()
    infos = list(call.inputs) + [spec for _, spec in call.outputs]
    for info in infos:
        if isinstance(info, Val):
            units.update(r for r in graph.roots(info.labels).tolist() if r in removed)
        elif isinstance(info, PVal):
            for pname, _ in info.sources:
                for (t, _), m in graph.members.items():
                    if t == pname:
                        units.update(r for r in graph.roots(m.labels).tolist() if r in removed)
    picked = sorted({unit_group[u] for u in units if u in unit_group})
    return [groups[i] for i in picked]


def groups_in_module(where: str, groups: list[Group], active: set[int]) -> list[Group]:
    """Active groups with a member inside module ``where`` (walking up to its parents until one has any)."""
    path = where if where != "(top-level forward)" else ""
    while True:
        prefix = path + "." if path else ""
        hit = [g for i, g in enumerate(groups) if i in active and any(m.tensor.startswith(prefix) for m in g.members)]
        if hit or not path:
            return hit
        path = path.rpartition(".")[0]


def signature(model: nn.Module, g: Group) -> tuple[str, str, frozenset]:
    """(module path, module class, members relative to it): groups of identical blocks share the last two."""
    names = [m.name.split(".") for m in g.members]
    common: list[str] = []
    for parts in zip(*names):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    path = ".".join(common)
    try:
        cls = type(model.get_submodule(path)).__name__ if path else type(model).__name__
    except AttributeError:
        cls = "?"
    cut = len(path) + 1 if path else 0
    return path, cls, frozenset((m.tensor[cut:], m.dim) for m in g.members)


def siblings(model: nn.Module, bad: list[Group], groups: list[Group], active: set[int]) -> list[Group]:
    """Groups that play the same part in other instances of the same block as the ``bad`` ones."""
    sigs = {i: signature(model, groups[i]) for i in active}
    wanted = {signature(model, g)[1:] for g in bad if signature(model, g)[0]}
    return [groups[i] for i, s in sigs.items() if s[0] and s[1:] in wanted and groups[i] not in bad]


def first_failing(candidates: list[Group], fails: Callable[[list[Group]], bool]) -> Group | None:
    """The group whose removal (after the ones before it) first makes ``fails`` true, by bisection."""
    if not candidates or not fails(candidates):
        return None
    lo, hi = 0, len(candidates)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(candidates[:mid]):
            hi = mid
        else:
            lo = mid
    return candidates[hi - 1]


