"""Convolutions, norms, PReLU and embeddings, as the functions every module calls (``F.conv2d``,
``F.batch_norm``, ``F.layer_norm``, ``F.group_norm``, ``F.embedding``, …).

Following the functions rather than the module classes is what lets subclasses that override
``forward`` (timm's ``BatchNormAct2d``, ``LayerNorm2d``, ``ScaledStdConv2d``, ``Conv2dSame``) be cut
like their parents: whatever the module does around the call, the call names its weights.

Convolutions: ``groups == 1`` reads every input channel; a depthwise convolution (one input channel
per group) carries its input's channels to its outputs; any other grouped convolution keeps its
groups and loses the same channels in every group (input and output positions are united across
groups), so ``in_channels / groups`` and ``out_channels / groups`` shrink together. GroupNorm loses
whole groups when groups are at least as many as the channels in one, else the same channels of
every group.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import Tensor

from .contract import weight_info
from ..depgraph import AttrFix, PVal, Val
from .elementwise import tensor_member
from ..recorder import Recorder


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _channel_input(rec: Recorder, x: Tensor, name: str) -> Val | None:
    xi = rec.info(x)
    if isinstance(xi, Val) and not (xi.flat and xi.dim == 1):
        rec.g.pin(xi.labels, f"{name} in {rec.where!r} reads channels that are split or not along dim 1")
        return None
    return xi if isinstance(xi, Val) else None


def conv(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    raw = rec.info(x)
    if isinstance(raw, Val) and raw.flat and raw.dim >= 2 and isinstance(result, Tensor) \
            and result.shape[raw.dim] == x.shape[raw.dim]:
        # channels laid along a spatial axis (ECA's conv1d over the channel descriptor): a same-size
        # convolution along it keeps one output per channel, so the labels carry through
        wi = weight_info(rec, w)
        if wi is not None:
            rec.producer((wi.sources[0][0], 0), w.shape[0], f"{name} in {rec.where!r} runs along the channels")
        rec.set(result, raw)
        return
    xi = _channel_input(rec, x, name)
    wi = weight_info(rec, w)
    if wi is None or len(wi.sources) != 1 or wi.sources[0][1][:2] != (0, 1):
        rec.pin(xi, f"{name} in {rec.where!r} with computed weights")
        rec.set(result, None)
        return
    wname = wi.sources[0][0]
    mname, mod, _ = rec.module_of(wname)
    derived = not isinstance(rec.info(w), PVal)
    ignored = f"ignore=[{mname}]" if id(mod) in rec.ignored else None
    cin, cout = x.shape[1], w.shape[0]
    if groups == 1:
        if xi is not None:
            tensor_member(rec, wname, 1, xi.labels, "in")
        slots = rec.producer((wname, 0), cout, ignored)
        role = "out"
    elif groups == cin and w.shape[1] == 1:  # depthwise: output o reads input o // multiplier
        if xi is None or ignored:
            rec.pin(xi, ignored or f"{name} in {rec.where!r}")
            rec.set(result, Val(rec.producer((wname, 0), cout, ignored or "depthwise conv of uncut channels"), (1,)))
            return
        slots = np.repeat(xi.labels, cout // cin)
        role = "dw"
    else:  # grouped: the same channels in every group
        if xi is not None:
            block = xi.labels.reshape(groups, cin // groups)
            rec.g.unite_along(block, 1)
            tensor_member(rec, wname, 1, block[0], "in")
        slots = rec.producer((wname, 0), cout, ignored)
        rec.g.unite_along(slots.reshape(groups, cout // groups), 1)
        role = "out"
    tensor_member(rec, wname, 0, slots, role)
    _bias(rec, b, slots)
    if derived:  # weight standardization: per-output-channel gains of the module are cut with its rows
        for pname, p in mod.named_parameters(recurse=False):
            if pname not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == cout and id(p) in rec.params:
                tensor_member(rec, rec.params[id(p)], 0, slots, role)
    rec.set(result, Val(slots, (1,), 0))


def conv_transpose(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    xi = _channel_input(rec, x, name)
    wi = weight_info(rec, w)
    if wi is None or groups != 1 or wi.sources[0][1][:2] != (0, 1):
        rec.pin(xi, f"{name} in {rec.where!r} (grouped or computed weights)")
        rec.set(result, None)
        return
    wname = wi.sources[0][0]
    mname, mod, _ = rec.module_of(wname)
    if xi is not None:
        tensor_member(rec, wname, 0, xi.labels, "in")
    slots = rec.producer((wname, 1), w.shape[1], f"ignore=[{mname}]" if id(mod) in rec.ignored else None)
    tensor_member(rec, wname, 1, slots, "out")
    _bias(rec, b, slots)
    rec.set(result, Val(slots, (1,), 0))


def _bias(rec: Recorder, b: Tensor | None, slots: np.ndarray) -> None:
    if b is None:
        return
    info = rec.info(b)
    if isinstance(info, PVal) and info.sources[0][1][:1] == (0,):
        tensor_member(rec, info.sources[0][0], 0, slots, "out")
    else:
        rec.g.pin(slots, f"a computed bias in {rec.where!r}")


def _per_channel(rec: Recorder, tensors: list[Tensor | None], labels: np.ndarray, role: str = "norm") -> bool:
    """Make dimension 0 of each per-channel tensor a member; False when one cannot be cut."""
    ok = True
    for t in tensors:
        if t is None:
            continue
        info = rec.info(t)
        if isinstance(info, PVal) and len(info.sources) == 1 and info.sources[0][1][:1] == (0,) and t.dim() == 1:
            tensor_member(rec, info.sources[0][0], 0, labels, role)
        elif t.numel() > 1:
            ok = False
    return ok


def batch_norm(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x = args[0]
    xi = rec.info(x)
    if not isinstance(xi, Val):
        rec.set(result, None)
        return
    if 1 not in xi.dims:
        rec.set(result, xi)
        return
    if not (xi.flat and xi.dim == 1):
        rec.g.pin(xi.labels, f"{name} over split channels in {rec.where!r}")
        rec.set(result, None)
        return
    stats = [_arg(args, kwargs, i, n) for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"),
                                                   (4, "bias"))]
    if not _per_channel(rec, stats, xi.labels):
        rec.g.pin(xi.labels, f"{name} in {rec.where!r} with computed statistics")
    rec.set(result, xi)


def layer_norm(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x = args[0]
    xi = rec.info(x)
    if not isinstance(xi, Val):
        rec.set(result, None)
        return
    shape = _arg(args, kwargs, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    w = _arg(args, kwargs, 2, "weight")
    b = _arg(args, kwargs, 3, "bias") if name != "rms_norm" else None
    normed = set(range(x.dim() - k, x.dim()))
    if not (set(xi.dims) & normed):
        rec.set(result, xi)
        return
    if k != 1 or not xi.flat:
        rec.g.pin(xi.labels, f"{name} over several dimensions in {rec.where!r}")
        rec.set(result, xi)
        return
    if not _per_channel(rec, [w, b], xi.labels):
        rec.g.pin(xi.labels, f"{name} in {rec.where!r} with computed weights")
    mod = rec.top_module()
    if w is None and mod is not None and isinstance(getattr(mod, "normalized_shape", None), tuple):
        rec.g.attr_fixes.append(AttrFix(rec.stack[-1], "normalized_shape", xi.labels.copy()))
    rec.set(result, xi)


def group_norm(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x = args[0]
    xi = _channel_input(rec, x, name)
    if xi is None:
        rec.set(result, rec.info(x) if isinstance(rec.info(x), Val) and 1 not in rec.info(x).dims else None)
        return
    g = _arg(args, kwargs, 1, "num_groups")
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    c = x.shape[1]
    per = c // g
    block = xi.labels.reshape(g, per)
    whole_groups = g >= per and w is not None
    rec.g.unite_along(block, 0 if whole_groups else 1)
    if not _per_channel(rec, [w, b], xi.labels):
        rec.g.pin(xi.labels, f"{name} in {rec.where!r} with computed weights")
    rec.set(result, xi)


def prelu(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    xi = rec.info(x)
    if not isinstance(xi, Val):
        rec.set(result, None)
        return
    if w.numel() > 1:
        if not (xi.flat and xi.dim == 1) or not _per_channel(rec, [w], xi.labels, "param"):
            rec.g.pin(xi.labels, f"prelu in {rec.where!r}")
    rec.set(result, xi)


def embedding(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    w = _arg(args, kwargs, 1, "weight")
    info = rec.info(w)
    if not isinstance(info, PVal) or info.sources[0][1][:2] != (0, 1):
        rec.set(result, None)
        return
    wname = info.sources[0][0]
    mname, mod, _ = rec.module_of(wname)
    slots = rec.producer((wname, 1), w.shape[1], f"ignore=[{mname}]" if id(mod) in rec.ignored else None)
    tensor_member(rec, wname, 1, slots, "embed")
    rec.set(result, Val(slots, (result.dim() - 1,), 0))


HANDLERS: dict[str, Callable] = {
    "conv1d": conv, "conv2d": conv, "conv3d": conv, "conv_transpose1d": conv_transpose,
    "conv_transpose2d": conv_transpose, "conv_transpose3d": conv_transpose, "batch_norm": batch_norm,
    "instance_norm": batch_norm, "layer_norm": layer_norm, "rms_norm": layer_norm, "group_norm": group_norm,
    "prelu": prelu, "embedding": embedding, "embedding_bag": embedding,
}
