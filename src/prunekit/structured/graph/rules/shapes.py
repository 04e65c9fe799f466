"""Shape operations: views, permutes, splits and the module sizes they read (joins and reductions are in
:mod:`.joins`).

A shape operation is followed exactly by running it once more on a *probe*: a tensor of the same
shape whose every element holds the index of the channel (label) it belongs to. Where the indices
land in the result says where each channel went — along one dimension, repeated (flatten), split
into (heads, head_dim) or (groups, channels per group), merged back, or sliced. A split unites the
positions that share their inner index, so after pruning every head / group keeps the same channels
and the reshape still works; a slice or a reorder of the channel dimension pins it (its positions
would shift once channels go). Integer attributes of the calling module that equal a reshaped
width (``self.head_dim``, ``self.hidden_dim``) are recorded, so removal can update them.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..depgraph import AttrFix, PCat, PVal, Val
from ..recorder import Recorder
from .elementwise import tensor_args

VIEWS = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes", "swapdims", "movedim",
         "moveaxis", "squeeze", "unsqueeze", "expand", "expand_as", "view_as", "reshape_as", "repeat", "tile",
         "repeat_interleave", "roll", "flip", "fliplr", "flipud", "rot90", "narrow", "select", "getitem", "t", "T",
         "mT", "H", "mH", "unfold", "index_select", "gather", "take_along_dim", "tensor_split", "unbind",
         "diagonal", "broadcast_to", "atleast_1d", "atleast_2d", "atleast_3d", "squeeze_", "unsqueeze_",
         "transpose_", "t_", "split", "split_with_sizes", "chunk", "ravel", "narrow_copy", "take", "index_select",
         "movedim", "unsqueeze_copy", "view_copy", "permute_copy", "expand_copy", "masked_select", "flatten_"}
SHAPE_OPS = VIEWS | {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
SIZED = {"view", "reshape", "expand", "unflatten", "broadcast_to"}
SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
           "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d", "interpolate", "upsample",
           "upsample_nearest", "upsample_bilinear", "grid_sample", "fractional_max_pool2d", "fractional_max_pool3d",
           "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "max_unpool2d", "avg_pool"}


# --- probes ----------------------------------------------------------------------------------------
def make_probe(v: Val, shape: torch.Size, device: torch.device | str = "cpu") -> Tensor:
    """A float64 tensor of ``shape`` holding, at each element, the flat index of its label in ``v``."""
    base = torch.arange(v.labels.size, dtype=torch.float64, device=device).reshape(v.labels.shape)
    order = sorted(range(len(v.dims)), key=lambda a: v.dims[a])
    base = base.permute(*order) if len(order) > 1 else base
    view = [1] * len(shape)
    for a in order:
        view[v.dims[a]] = shape[v.dims[a]]
    return base.reshape(view).expand(shape).contiguous()


def _along(a: np.ndarray, axis: int) -> np.ndarray:
    idx = [0] * a.ndim
    idx[axis] = slice(None)
    return a[tuple(idx)]


def is_regular(idx: np.ndarray, c: int) -> bool:
    """Whether ``idx`` is arange(c) with each entry repeated a times, the whole tiled b times."""
    if len(idx) % c:
        return False
    for a in range(1, len(idx) // c + 1):
        if (len(idx) // c) % a:
            continue
        b = len(idx) // (c * a)
        if np.array_equal(idx, np.tile(np.repeat(np.arange(c), a), b)):
            return True
    return False


def varying_dims(r: Tensor) -> list[int]:
    return [k for k in range(r.dim()) if r.shape[k] > 1 and not torch.equal(r, r.narrow(k, 0, 1).expand_as(r))]


def analyze(rec: Recorder, r: Tensor, v: Val) -> Val | str:
    """The labels of a shape operation's result ``r`` computed on a probe of ``v``, or why it cannot be followed."""
    n = v.labels.shape[v.free]
    if r.dim() == 0 or r.numel() == 0:
        return "reduces the channels to one element"
    dims = varying_dims(r)
    sub = r
    for k in reversed(range(r.dim())):
        if k not in dims:
            sub = sub.select(k, 0)
    idx = sub.round().long().cpu().numpy()
    if not dims:
        return "selects a single channel"
    comps = np.unravel_index(idx, v.labels.shape)
    cf = comps[v.free]
    vary = [i for i in range(idx.ndim) if idx.shape[i] > 1 and not (cf == np.take(cf, [0], axis=i)).all()]
    labels = v.labels.ravel()[idx]
    if not vary:
        return "selects a single channel" if n > 1 else "keeps a width-1 channel dimension"
    if len(vary) == 1:
        # cf varies only along vary[0], so any line along it holds the sequence
        seq = np.moveaxis(cf, vary[0], 0).reshape(cf.shape[vary[0]], -1)[:, 0]
        if not is_regular(seq, n):
            return "slices or reorders the channels"
        return Val(labels, tuple(dims), vary[0])
    strides = {}
    for i in vary:
        seq = np.moveaxis(cf, i, 0).reshape(cf.shape[i], -1)[:, 0] - cf.flat[0]
        st = int(seq[1])
        if st <= 0 or not np.array_equal(seq, st * np.arange(len(seq))):
            return "splits the channels irregularly"
        strides[i] = st
    order = sorted(vary, key=lambda i: strides[i])
    expect, size = 1, 1
    for i in order:
        if strides[i] != expect:
            return "splits the channels irregularly"
        expect *= idx.shape[i]
    if expect != n or cf.flat[0] != 0:
        return "splits the channels irregularly"
    grid = sum(np.arange(idx.shape[i]).reshape([-1 if k == i else 1 for k in range(idx.ndim)]) * strides[i]
               for i in vary)
    if not np.array_equal(cf, np.broadcast_to(grid, cf.shape)):
        return "splits the channels irregularly"
    inner = order[0]
    rec.g.unite_along(labels, inner)  # the same channels in every head / group
    return Val(labels, tuple(dims), inner)


def _substitute(args: tuple, kwargs: dict, target: Tensor, probe: Tensor) -> tuple[tuple, dict]:
    new_args = tuple(probe if a is target else a for a in args)
    new_kwargs = {k: (probe if a is target else a) for k, a in kwargs.items()}
    return new_args, new_kwargs


def _first_tracked(rec: Recorder, args: tuple, kwargs: dict) -> tuple[Tensor | None, Val | None]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            info = rec.info(a)
            if isinstance(info, Val):
                return a, info
    return None, None


def follow(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """A view-like operation: run it on the probe and read where the channels went."""
    x, v = _first_tracked(rec, args, kwargs)
    if not name.endswith("_as"):  # view_as / expand_as read only the other tensor's shape
        others = [rec.info(t) for t in _tensors(args, kwargs) if t is not x]
        rec.pin([o for o in others if isinstance(o, Val)], f"{name} in {rec.where!r} indexes with channels")
    if name in ("chunk", "split", "split_with_sizes") and v.flat and _split_dim(name, args, kwargs, x) == v.dim:
        rec.set_all(result, _equal_pieces(rec, name, args, kwargs, x, v, result))
        return
    if name in ("chunk", "split") and not v.flat and _split_dim(name, args, kwargs, x) == v.dims[v.free] \
            and isinstance(result, (tuple, list)) and len({r.shape[v.dims[v.free]] for r in result}) == 1 \
            and v.labels.shape[v.free] % len(result) == 0:
        # equal pieces of a split head dim (GPT-NeoX's fused q|k|v per head): position j of every piece together
        pieces = np.split(v.labels, len(result), axis=v.free)
        for p in pieces[1:]:
            rec.g.union(pieces[0], p)
        rec.set_all(result, [Val(p, v.dims, v.free) for p in pieces])
        return
    probe = make_probe(v, x.shape, x.device)
    a, k = _substitute(args, kwargs, x, probe)
    try:
        r = func(*a, **k)
    except Exception as exc:  # an op that cannot run on a float probe
        rec.pin(v, f"{name} in {rec.where!r} could not be followed ({type(exc).__name__})")
        rec.set_all(result, None)
        return
    outs = r if isinstance(r, (tuple, list)) else [r]
    infos = []
    for o in outs:
        if not isinstance(o, Tensor):
            infos.append(None)
            continue
        got = analyze(rec, o, v)
        if isinstance(got, str):
            rec.g.pin(v.labels, f"{name} in {rec.where!r} {got}")
            infos.append(None)
        else:
            infos.append(got)
    rec.set_all(result, infos if isinstance(result, (tuple, list)) else infos[0])
    if name in SIZED and isinstance(result, Tensor) and isinstance(infos[0], Val):
        _record_sizes(rec, name, args, result, infos[0])


def _tensors(args: tuple, kwargs: dict) -> list[Tensor]:
    return tensor_args(args, kwargs)


def _split_dim(name: str, args: tuple, kwargs: dict, x: Tensor) -> int:
    d = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    return d + x.dim() if isinstance(d, int) and d < 0 else d


def _equal_pieces(rec: Recorder, name: str, args: tuple, kwargs: dict, x: Tensor, v: Val, result: Any) -> list:
    c = x.shape[v.dim]
    sizes = [r.shape[v.dim] for r in result]
    if sum(sizes) != c:
        rec.g.pin(v.labels, f"{name} in {rec.where!r} splits the channels into unequal parts")
        return [None] * len(result)
    size = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size"))
    if isinstance(size, (list, tuple)) or len(set(sizes)) != 1:
        # a list of part sizes (MixConv, q/k/v of different widths): each part keeps its own channels and
        # the module's stored list of sizes follows them
        fixes = size_attrs(rec, sizes, 0, sizes[0], inner=False) if rec.stack else []
        fixes = [(a, i) for a, i in fixes if i is not None]
        if not fixes and len(set(sizes)) == 1:
            fixes = None
        elif not fixes:
            rec.g.pin(v.labels, f"{name} in {rec.where!r} splits the channels into unequal parts of constant sizes")
            return [None] * len(result)
        if fixes is not None:
            bounds = np.cumsum([0] + sizes)
            parts = [v.labels[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]
            for attr, _ in fixes:
                for k, part in enumerate(parts):
                    rec.g.attr_fixes.append(AttrFix(rec.stack[-1], attr, part.copy(), index=k))
            return [Val(part, v.dims, 0) for part in parts]
    block = v.labels.reshape(len(sizes), sizes[0])
    rec.g.unite_along(block, 1)  # position j of every piece goes together
    if name != "chunk" and isinstance(size, int) and size == sizes[0] and rec.stack:
        for attr, index in size_attrs(rec, [size], 0, size, inner=False):
            rec.g.attr_fixes.append(AttrFix(rec.stack[-1], attr, block[0].copy(), index=index))
    return [Val(block[i], v.dims, 0) for i in range(len(sizes))]


def _sizes_of(args: tuple) -> list:
    sizes: list = []
    for a in args[1:]:
        if isinstance(a, (tuple, list, torch.Size)):
            sizes += list(a)
        else:
            sizes.append(a)
    return sizes


_COUNT = re.compile(r"(^|_)(num|n)_|heads$|groups|layers|depth|stride|kernel|window|patch|ratio|(^|_)n$|image|img|"
                    r"resolution|seq|len|token|pos")
_WIDTH = re.compile(r"dim|channel|hidden|embed|width|feature|planes|split")


def size_attrs(rec: Recorder, sizes: list, d: int, width: int, inner: bool) -> list[tuple[str, int | None]]:
    """Attributes of the calling module that hold ``width``, the size at position ``d`` of a reshape's sizes:
    an int equal to it, or a shape tuple equal to all the sizes. When several ints match, those whose
    names read as widths (``hidden_dim``, ``split_size``) are taken, and counts or spatial sizes
    (``num_heads``, ``image_size``) are left alone."""
    mod = rec.top_module()
    if mod is None:
        return []
    ints = [k for k, val in vars(mod).items() if type(val) is int and val == width and not k.startswith("_")
            and not _COUNT.search(k.lower())]
    tuples = [(k, d) for k, val in vars(mod).items() if isinstance(val, (tuple, list)) and not k.startswith("_")
              and len(val) == len(sizes) and list(val) == list(sizes)]
    if len(ints) > 1:  # several names for one width: the width-like ones (embed_dim, split_size), else
        picked = [k for k in ints if _WIDTH.search(k.lower())] or ints
        if not picked:
            rec.g.ambiguous_attrs.add((rec.stack[-1], "/".join(ints)))
            return tuples
        ints = picked
    return [(k, None) for k in ints] + tuples


def _record_sizes(rec: Recorder, name: str, args: tuple, result: Tensor, v: Val) -> None:
    """Remember integer attributes of the calling module that equal a reshaped channel width."""
    if name == "unflatten":
        return
    sizes = _sizes_of(args)
    d = v.dims[v.free]
    width = result.shape[d]
    if len(sizes) != result.dim() or not isinstance(sizes[d], int) or sizes[d] != width or width <= 1:
        return
    labels = v.labels if v.labels.ndim == 1 else np.moveaxis(v.labels, v.free, 0).reshape(width, -1)[:, 0]
    for attr, index in size_attrs(rec, sizes, d, width, inner=len(v.dims) > 1):
        rec.g.attr_fixes.append(AttrFix(rec.stack[-1], attr, labels.copy(), index=index))


def follow_params(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """A view-like operation on a parameter (``cls_token.expand``, ``gamma.view(1, -1, 1, 1)``): map the
    result's dimensions back to the parameter's."""
    if name in ("cat", "concat", "concatenate"):
        parts = list(args[0]) if args else list(kwargs.get("tensors", ()))
        d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        infos = [rec.info(t) for t in parts]
        if isinstance(result, Tensor) and all(isinstance(i, PVal) for i in infos):
            d = d + result.dim() if d < 0 else d
            bounds = np.cumsum([0] + [t.shape[d] for t in parts])
            rec.set(result, PCat(d, tuple((int(bounds[k]), int(bounds[k + 1]), i) for k, i in enumerate(infos))))
        else:
            rec.set(result, None)
        return
    if name in ("stack", "hstack", "vstack"):
        rec.set_all(result, None)
        return
    x = next((a for a in args if isinstance(a, Tensor)), None)  # the data; *_as ops' other tensor is a template
    if x is None or not isinstance(rec.info(x), PVal):
        rec.set_all(result, None)
        return
    info = rec.info(x)
    outs = result if isinstance(result, (tuple, list)) else [result]
    maps: list[list[list]] = [[[None] * o.dim() if isinstance(o, Tensor) else [] for o in outs]
                              for _ in info.sources]
    lost = [False] * len(outs)  # a parameter dimension that went somewhere the probe cannot name
    for j in range(x.dim()):
        if x.shape[j] <= 1 or all(dm[j] is None for _, dm in info.sources if j < len(dm)):
            continue
        view = [1] * x.dim()
        view[j] = x.shape[j]
        probe = torch.arange(x.shape[j], dtype=torch.float64, device=x.device).reshape(view).expand(x.shape).contiguous()
        a, k = _substitute(args, kwargs, x, probe)
        try:
            r = func(*a, **k)
        except Exception:
            rec.set_all(result, None)
            return
        rs = r if isinstance(r, (tuple, list)) else [r]
        for oi, o in enumerate(rs):
            if not isinstance(o, Tensor) or o.dim() == 0:
                continue
            vd = varying_dims(o)
            seq = o.movedim(vd[0], 0).reshape(o.shape[vd[0]], -1)[:, 0].round().long().cpu().numpy() if len(vd) == 1 \
                else None
            if seq is not None and is_regular(seq, x.shape[j]):
                for si, (_, dm) in enumerate(info.sources):
                    maps[si][oi][vd[0]] = dm[j] if j < len(dm) else None
            elif vd:
                lost[oi] = True
    res = []
    for oi, o in enumerate(outs):
        if not isinstance(o, Tensor) or lost[oi]:
            res.append(None)
            if isinstance(o, Tensor):  # a slice or reshuffle of a parameter: its shape is not predicted
                rec.derived.add(id(o))
                rec._keep.append(o)
            continue
        res.append(PVal(tuple((nm, tuple(maps[si][oi])) for si, (nm, _) in enumerate(info.sources))))
        if name in SIZED and rec.stack:
            sizes = _sizes_of(args)
            for k, entry in enumerate(maps[0][oi] if maps else []):
                if entry is None or len(sizes) != o.dim() or sizes[k] != o.shape[k] or o.shape[k] <= 1:
                    continue
                for attr, index in size_attrs(rec, sizes, k, o.shape[k], inner=False):
                    rec.g.attr_fixes.append(AttrFix(rec.stack[-1], attr, member=(info.sources[0][0], entry),
                                                    index=index))
    rec.set_all(result, res if isinstance(result, (tuple, list)) else res[0])


HANDLERS: dict[str, Callable] = {n: follow for n in VIEWS}
