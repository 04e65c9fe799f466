"""Joining and reducing channels: concatenation and stacking, reductions and sorting, padding and pooling,
GLU, channel shuffle, and in-place writes into part of a tensor (see :mod:`.shapes` for views)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import Tensor

from ..depgraph import PVal, Val
from .elementwise import PIN_IF_TRACKED_DIM, REDUCTIONS, elementwise, param_members, tensor_args, tensor_member
from ..recorder import Recorder
from .shapes import SPATIAL, _first_tracked


# --- concatenation ---------------------------------------------------------------------------------
def cat(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    parts = list(args[0]) if args else list(kwargs.get("tensors", ()))
    d = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if name in ("hstack", "vstack"):
        rec.pin([rec.info(t) for t in parts], f"{name} in {rec.where!r}")
        rec.set(result, None)
        return
    infos = [rec.info(t) for t in parts]
    vals = [i for i in infos if isinstance(i, Val)]
    nd = result.dim()
    d = d + nd if d < 0 else d
    stack = name == "stack"
    dims = {v.dims for v in vals}
    td = next(iter(dims))
    if len(dims) != 1 or (not stack and d in td and not all(v.flat for v in vals)):
        rec.pin(vals, f"{name} in {rec.where!r} joins channels along different dimensions")
        rec.set(result, None)
        return
    if stack:
        out = vals[0]
        for v in vals[1:]:
            rec.g.union(out.labels, v.labels) if v.labels.shape == out.labels.shape else rec.g.pin(v.labels, name)
        for t, i in zip(parts, infos):
            if not isinstance(i, Val):
                rec.g.pin(out.labels, f"{name} in {rec.where!r} stacks channels with a tensor the graph cannot cut")
        rec.set(result, Val(out.labels, tuple(x + (1 if d <= x else 0) for x in out.dims), out.free))
        return
    if d not in td:  # along tokens / batch: all parts share the channels
        out = vals[0]
        for v in vals[1:]:
            if v.labels.shape != out.labels.shape:
                rec.pin(vals, f"{name} in {rec.where!r}")
                rec.set(result, None)
                return
            rec.g.union(out.labels, v.labels)
        for t, i in zip(parts, infos):
            if isinstance(i, PVal) and out.flat:
                param_members(rec, i, out.dim, out.labels, "param", "joins the channels after a reshape")
            elif not isinstance(i, Val):
                rec.g.pin(out.labels, f"{name} in {rec.where!r} joins the channels with a tensor the graph cannot cut")
        rec.set(result, out)
        return
    pieces = []
    for t, i in zip(parts, infos):
        if isinstance(i, Val):
            pieces.append(i.labels)
        elif isinstance(i, PVal) and len(i.sources) == 1 and i.sources[0][1][d] is not None:
            pname, dm = i.sources[0]
            slots = rec.producer((pname, dm[d]), t.shape[d])
            tensor_member(rec, pname, dm[d], slots, "param")
            pieces.append(slots)
        else:
            pieces.append(rec.g.new_slots(t.shape[d], f"concatenated in {rec.where!r} with a tensor the graph cannot cut"))
    rec.set(result, Val(np.concatenate(pieces), (d,), 0))


# --- reductions, sorting, padding, pooling -------------------------------------------------------
def _reduced_dims(name: str, args: tuple, kwargs: dict, nd: int) -> list[int] | None:
    if "dim" in kwargs or "axis" in kwargs:
        dims = kwargs.get("dim", kwargs.get("axis"))
    else:
        pos = 2 if name in ("norm", "vector_norm") else 1
        dims = args[pos] if len(args) > pos else None
        if isinstance(dims, bool):
            dims = None
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(x, int) for x in dims):
        return None
    return sorted(d + nd if d < 0 else d for d in dims)


def reduction(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    tensors = tensor_args(args, kwargs)
    if name in ("max", "min") and len(tensors) > 1:  # torch.max(a, b): elementwise
        elementwise(rec, func, name, args, kwargs, result)
        return
    x = tensors[0]
    v = rec.info(x)
    if not isinstance(v, Val):
        rec.set_all(result, None)
        return
    dims = _reduced_dims(name, args, kwargs, x.dim())
    first = result[0] if isinstance(result, (tuple, list)) else result
    if dims is None:
        if isinstance(first, Tensor) and first.dim() == x.dim() and first.shape == x.shape:
            rec.set_all(result, v)  # e.g. median over the last dim of a 1-D view
            return
        rec.set_all(result, None)  # reduced everything: no channels left to follow
        return
    keep = isinstance(first, Tensor) and first.dim() == x.dim()
    tracked = [a for a, d in enumerate(v.dims) if d in dims]
    if v.free in tracked:
        rec.set_all(result, None)  # a mean / norm over the channels: shape-safe, nothing to follow
        return
    labels = v.labels
    for a in sorted(tracked, reverse=True):
        labels = np.take(labels, 0, axis=a)
    rest = [d for a, d in enumerate(v.dims) if a not in tracked]
    free = v.free - sum(a < v.free for a in tracked)
    new_dims = tuple(d if keep else d - sum(r < d for r in dims) for d in rest)
    rec.set_all(result, Val(labels, new_dims, free))


def sorting(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, v = _first_tracked(rec, args, kwargs)
    d = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) and name not in ("topk",
                                                                                                  "kthvalue") else -1)
    if name in ("topk", "kthvalue"):
        d = kwargs.get("dim", args[2] if len(args) > 2 else -1)
    d = d + x.dim() if isinstance(d, int) and d < 0 else d
    if d in v.dims:
        rec.g.pin(v.labels, f"{name} over the channels in {rec.where!r}")
        rec.set_all(result, None)
        return
    outs = result if isinstance(result, (tuple, list)) else [result]
    rec.set_all(result, [v if isinstance(o, Tensor) and o.dim() == x.dim() else None for o in outs]
                if isinstance(result, (tuple, list)) else v)


def pad(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, v = _first_tracked(rec, args, kwargs)
    amounts = args[1] if len(args) > 1 else kwargs.get("pad", ())
    touched = {x.dim() - 1 - i for i in range(len(amounts) // 2) if amounts[2 * i] or amounts[2 * i + 1]}
    if touched & set(v.dims):
        rec.g.pin(v.labels, f"pad of the channels in {rec.where!r}")
        rec.set(result, None)
        return
    rec.set(result, v)


def spatial(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """Pooling / resizing over the dimensions after (batch, channels)."""
    x, v = _first_tracked(rec, args, kwargs)
    outs = result if isinstance(result, (tuple, list)) else [result]
    if any(d >= 2 for d in v.dims) or any(isinstance(o, Tensor) and o.dim() != x.dim() for o in outs):
        rec.g.pin(v.labels, f"{name} over the channels in {rec.where!r}")
        rec.set_all(result, None)
        return
    rec.set_all(result, v)


def glu(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, v = _first_tracked(rec, args, kwargs)
    d = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    d = d + x.dim() if d < 0 else d
    if not v.flat or d != v.dim:
        rec.set(result, v if d not in v.dims else None)
        if d in v.dims:
            rec.g.pin(v.labels, f"glu over split channels in {rec.where!r}")
        return
    half = v.labels.reshape(2, -1)
    rec.g.unite_along(half, 1)
    rec.set(result, Val(half[0], v.dims, 0))


def channel_shuffle(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, v = _first_tracked(rec, args, kwargs)
    g = args[1] if len(args) > 1 else kwargs.get("groups")
    if not v.flat or v.dim != 1 or x.shape[1] % g:
        rec.g.pin(v.labels, f"channel_shuffle in {rec.where!r}")
        rec.set(result, None)
        return
    block = v.labels.reshape(g, -1)
    rec.g.unite_along(block, 1)
    rec.set(result, Val(block.T.ravel(), (1,), 0))


def setitem(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    for t in tensor_args(args, kwargs):
        rec.pin(rec.info(t), f"an in-place write into part of a tensor in {rec.where!r}")
    if args and isinstance(args[0], Tensor):
        rec.set(args[0], None)


def index_add(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """``out.index_add_(dim, index, source)`` along tokens (a mixture of experts gathering its experts'
    outputs): the source's channels are the target's; along the channels it is an in-place write."""
    target = args[0] if args else kwargs.get("input")
    d = args[1] if len(args) > 1 else kwargs.get("dim")
    source = args[3] if len(args) > 3 else kwargs.get("source", kwargs.get("src"))
    ti, si = rec.info(target), rec.info(source)
    d = d + target.dim() if isinstance(d, int) and d < 0 else d
    ok = isinstance(source, Tensor) and source.dim() == target.dim()
    for v in (ti, si):
        if isinstance(v, Val) and d in v.dims:
            ok = False
    if not ok or (isinstance(ti, Val) and isinstance(si, Val) and ti.labels.shape != si.labels.shape):
        setitem(rec, func, name, args, kwargs, result)
        return
    if isinstance(ti, Val) and isinstance(si, Val):
        rec.g.union(ti.labels, si.labels)
    out = ti if isinstance(ti, Val) else si
    if isinstance(ti, Val) != isinstance(si, Val):
        rec.pin(out, f"{name} in {rec.where!r} adds channels to a tensor the graph cannot cut")
        out = None
    rec.set(result, out)


HANDLERS: dict[str, Callable] = {n: cat for n in ("cat", "concat", "concatenate", "stack", "hstack", "vstack")}
HANDLERS.update({n: reduction for n in REDUCTIONS - {"median", "mode"}})
HANDLERS.update({n: sorting for n in PIN_IF_TRACKED_DIM})
HANDLERS.update({n: spatial for n in SPATIAL})
HANDLERS.update({"pad": pad, "glu": glu, "channel_shuffle": channel_shuffle, "native_channel_shuffle": channel_shuffle,
                 "setitem": setitem, "index_put": setitem, "index_put_": setitem, "scatter": setitem,
                 "scatter_": setitem, "index_add": index_add, "index_add_": index_add, "index_copy": index_add,
                 "index_copy_": index_add, "masked_scatter": setitem, "masked_scatter_": setitem,
                 "index_fill": setitem, "index_fill_": setitem, "scatter_add": index_add, "scatter_add_": index_add,
                 "scatter_reduce": setitem})
