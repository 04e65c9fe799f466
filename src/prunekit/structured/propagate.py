"""The interpreter that follows channel labels through every node of a traced model, and the
tables of operations it knows (see :mod:`prunekit.structured.graph` for the idea)."""

from __future__ import annotations

import operator
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, fx, nn

from .graph import DependencyGraph, UnsupportedOperation, Val

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.Softplus, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "dropout", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "softplus", "mish", "contiguous", "clone", "float", "to", "detach", "neg", "abs",
    "exp", "sqrt", "rsqrt", "clamp", "clip", "sin", "cos", "sigmoid_", "tanh_", "max_pool1d", "max_pool2d",
    "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool2d", "interpolate", "type_as", "half", "double", "bfloat16",
}
BINARY = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "mul_", "sub_",
          "div_", "maximum", "minimum", "pow", "floordiv", "rsub"}
RESHAPES = {"view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "movedim",
            "expand", "expand_as", "view_as", "reshape_as", "getitem", "narrow", "select", "t", "unflatten",
            "repeat", "swapaxes", "split", "tensor_split", "unbind"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"}
SOFTMAX = {"softmax", "log_softmax"}
OPAQUE = {"matmul", "bmm", "mm", "einsum", "linear", "conv1d", "conv2d", "conv3d", "scaled_dot_product_attention",
          "baddbmm", "addmm", "layer_norm", "group_norm", "batch_norm", "embedding", "cumsum", "sort", "topk",
          "argmax", "argmin", "masked_fill", "where", "pad"}


def _name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t.rsplit(".", 1)[-1] if node.op == "call_module" else t
    return getattr(t, "__name__", str(t)).strip("_") if t not in (operator.getitem,) else "getitem"


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    if node.op == "call_module":
        path = str(node.target)
    return path or "(top-level forward)"


class ChannelPropagator(fx.Interpreter):
    """Runs the traced model once and follows channel labels through every node."""

    def __init__(self, gm: fx.GraphModule, graph: DependencyGraph, ignored: set[int]) -> None:
        super().__init__(gm)
        self.g = graph
        self.ignored = ignored
        self.vals: dict[fx.Node, Any] = {}
        self.out_slots: dict[str, np.ndarray] = {}

    # --- helpers -------------------------------------------------------------------------------
    def val(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.vals.get(a, Val())
        if isinstance(a, (list, tuple)):
            return [self.val(x) for x in a]
        return Val()

    def tracked(self, node: fx.Node) -> list[tuple[Tensor, Val]]:
        out = []
        for a in node.all_input_nodes:
            v = self.vals.get(a)
            if isinstance(v, Val) and v.labels is not None:
                out.append((self.env[a], v))
            elif isinstance(v, list):
                out += [(t, x) for t, x in zip(self.env[a], v) if isinstance(x, Val) and x.labels is not None]
        return out

    def pin_all(self, node: fx.Node) -> None:
        for _, v in self.tracked(node):
            self.g.pin(v.labels)

    def producer(self, name: str, n: int, pinned: bool) -> np.ndarray:
        if name not in self.out_slots:
            self.out_slots[name] = self.g.new_slots(n, pinned)
        return self.out_slots[name]

    # --- the interpreter hook ------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op in ("placeholder", "get_attr"):
            self.vals[n] = Val()
        elif n.op == "output":
            self.pin_all(n)
        elif n.op == "call_module":
            self.vals[n] = self.on_module(n, self.fetch_attr(n.target), result)
        elif not self.tracked(n):
            self.vals[n] = self.fresh_untracked(result)
        else:
            self.vals[n] = self.on_function(n, result)
        return result

    def fresh_untracked(self, result: Any) -> Any:
        if isinstance(result, (tuple, list)):
            return [Val() for _ in result]
        return Val()

    # --- modules -------------------------------------------------------------------------------
    def on_module(self, n: fx.Node, m: nn.Module, result: Any) -> Any:
        name = str(n.target)
        first = n.args[0] if n.args else next(iter(n.kwargs.values()), None)
        x_t = self.env.get(first) if isinstance(first, fx.Node) else None
        x = self.val(first) if isinstance(first, fx.Node) else Val()
        if not isinstance(x, Val) or not isinstance(x_t, Tensor):
            x = Val()
        if isinstance(m, CONVS):
            return self.on_conv(name, m, x, id(m) in self.ignored)
        if isinstance(m, nn.Linear):
            if x.labels is not None and x.dim == x_t.dim() - 1:
                self.g.add_member(name, m, "in", x.labels)
            else:
                self.g.pin(x.labels)
            slots = self.producer(name, m.out_features, id(m) in self.ignored)
            self.g.add_member(name, m, "out", slots)
            return Val(slots, result.dim() - 1)
        if id(m) in self.ignored or not self.tracked(n):
            self.pin_all(n)
            return self.fresh_untracked(result)
        if isinstance(m, NORMS):
            return self.on_norm(name, m, x, x_t)
        if isinstance(m, ELEMENTWISE_MODULES):
            return x if x.dim is not None and x.dim < result.dim() else self.pinned(x)
        if isinstance(m, nn.Flatten):
            return self.follow_shape(n, lambda p: torch.flatten(p, m.start_dim, m.end_dim), x, x_t)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            d = m.dim if m.dim is None or m.dim >= 0 else m.dim + x_t.dim()
            return self.pinned(x) if d == x.dim else x
        if isinstance(m, nn.MultiheadAttention):
            self.pin_all(n)  # its embedding width is shared by q, k, v and out: kept whole
            return self.fresh_untracked(result)
        raise UnsupportedOperation(
            f"cannot follow channels through module {name!r} of type {type(m).__name__}: prunekit does not know "
            f"how its weights map to input and output channels. Pass it in ignore=[...] to keep its channels whole."
        )

    def pinned(self, x: Val) -> Val:
        self.g.pin(x.labels)
        return Val()

    def on_conv(self, name: str, m: nn.Module, x: Val, ignored: bool) -> Val:
        if x.labels is not None and x.dim != 1:
            self.g.pin(x.labels)
            x = Val()
        cin, cout, groups = m.in_channels, m.out_channels, m.groups
        if groups == 1:
            if x.labels is not None:
                self.g.add_member(name, m, "in", x.labels)
            slots = self.producer(name, cout, ignored)
            self.g.add_member(name, m, "out", slots)
            return Val(slots, 1)
        if groups == cin and cout % cin == 0:  # depthwise: output channel o reads input channel o // mult
            if x.labels is None or ignored:
                self.g.pin(x.labels)
                return Val(self.g.new_slots(cout, pinned=True), 1)
            labels = np.repeat(x.labels, cout // cin)
            self.g.add_member(name, m, "dw", labels)
            return Val(labels, 1)
        # grouped convolution: channels must stay balanced across groups; kept whole
        self.g.pin(x.labels)
        return Val(self.g.new_slots(cout, pinned=True), 1)

    def on_norm(self, name: str, m: nn.Module, x: Val, x_t: Tensor) -> Val:
        if x.labels is None:
            return x
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1 or x.dim != x_t.dim() - 1 or not m.elementwise_affine:
                return self.pinned(x)
        elif isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return x
            if x.dim != 1:
                return self.pinned(x)
        elif x.dim != 1:
            return self.pinned(x)
        if isinstance(m, nn.GroupNorm):  # a group's channels go together: whole groups are removed
            per = m.num_channels // m.num_groups
            for g in range(m.num_groups):
                block = x.labels[g * per:(g + 1) * per]
                self.g.union(np.repeat(block[:1], len(block)), block)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and not m.affine and m.running_mean is None:
            return x
        self.g.add_member(name, m, "norm", x.labels)
        return x

    # --- functions and methods -----------------------------------------------------------------
    def on_function(self, n: fx.Node, result: Any) -> Any:
        op = _name(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        first = n.args[0] if n.args else None
        x = self.val(first) if isinstance(first, fx.Node) else Val()
        if op == "getitem" and isinstance(x, list):
            return x[n.args[1]] if isinstance(n.args[1], int) else self.pin_list(x)
        if op in UNARY:
            return x if isinstance(x, Val) else self.pin_list(x)
        if op in BINARY:
            return self.on_binary(n, result)
        if op in ("cat", "concat", "concatenate", "stack"):
            return self.on_cat(n, op, args, kwargs, result)
        if op == "chunk":
            return self.on_chunk(n, args, kwargs, x)
        if op in RESHAPES and isinstance(x, Val) and x.labels is not None:
            return self.follow_shape(n, None, x, self.env[first], args, kwargs, result)
        if op in REDUCTIONS:
            return self.on_reduction(n, args, kwargs, x)
        if op in SOFTMAX:
            d = args[1] if len(args) > 1 else kwargs.get("dim")
            d = d + args[0].dim() if isinstance(d, int) and d < 0 else d
            return self.pinned(x) if d == x.dim else x
        if not isinstance(result, Tensor) and not (isinstance(result, (tuple, list)) and result
                                                   and all(isinstance(r, Tensor) for r in result)):
            return Val()  # sizes, shapes, dims: no channels to follow
        if op in OPAQUE:
            self.pin_all(n)
            return self.fresh_untracked(result)
        raise UnsupportedOperation(
            f"cannot follow channels through the operation {op!r} (node {n.name}) in module {_where(n)!r}. "
            f"Pass that module in ignore=[...] so it is traced as one opaque leaf and its channels are kept whole."
        )

    def pin_list(self, vals: list) -> list:
        for v in vals:
            if isinstance(v, Val):
                self.g.pin(v.labels)
        return [Val() for _ in vals]

    def on_binary(self, n: fx.Node, result: Tensor) -> Val:
        if not isinstance(result, Tensor):
            self.pin_all(n)
            return Val()
        out: Val = Val()
        for a in list(n.args) + list(n.kwargs.values()):
            if not isinstance(a, fx.Node) or not isinstance(self.env.get(a), Tensor):
                continue
            t, v = self.env[a], self.val(a)
            shift = result.dim() - t.dim()
            if not isinstance(v, Val) or v.labels is None:
                # an untracked tensor (input, parameter) that is full-width along the tracked dim pins it
                continue
            d = v.dim + shift
            if out.labels is None:
                out = Val(v.labels, d)
            elif out.dim == d:
                self.g.union(out.labels, v.labels)
            else:
                self.g.pin(v.labels)
        for a in list(n.args) + list(n.kwargs.values()):
            if isinstance(a, fx.Node) and isinstance(self.env.get(a), Tensor):
                v = self.val(a)
                t = self.env[a]
                d = out.dim - (result.dim() - t.dim())
                if (not isinstance(v, Val) or v.labels is None) and d >= 0 and t.shape[d] != 1:
                    self.g.pin(out.labels)
        return out

    def on_cat(self, n: fx.Node, op: str, args: tuple, kwargs: dict, result: Tensor) -> Val:
        tensors = args[0]
        d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        vals = self.val(n.args[0])
        d = d + result.dim() if d < 0 else d
        tracked = [v for v in vals if v.labels is not None]
        dims = {v.dim for v in tracked}
        if len(dims) != 1:
            for v in tracked:
                self.g.pin(v.labels)
            return Val()
        td = dims.pop()
        if op == "stack":
            out = tracked[0]
            for v in tracked[1:]:
                self.g.union(out.labels, v.labels)
            if len(tracked) < len(vals):
                self.g.pin(out.labels)
            return Val(out.labels, td + (1 if d <= td else 0))
        if d == td:
            parts = [v.labels if v.labels is not None else self.g.new_slots(t.shape[d], pinned=True)
                     for v, t in zip(vals, tensors)]
            return Val(np.concatenate(parts), d)
        out = tracked[0]
        for v in tracked[1:]:
            self.g.union(out.labels, v.labels)
        if len(tracked) < len(vals):
            self.g.pin(out.labels)
        return Val(out.labels, td)

    def on_chunk(self, n: fx.Node, args: tuple, kwargs: dict, x: Val) -> list:
        t, k = args[0], args[1]
        d = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        d = d + t.dim() if d < 0 else d
        if d != x.dim:
            return [x for _ in range(min(k, t.shape[d]))]
        c = t.shape[d]
        if c % k:
            self.g.pin(x.labels)
            return [Val() for _ in range(-(-c // k))]
        pieces = np.split(x.labels, k)
        for p in pieces[1:]:  # equal chunks stay equal: position j of every chunk goes together
            self.g.union(pieces[0], p)
        return [Val(p, d) for p in pieces]

    def on_reduction(self, n: fx.Node, args: tuple, kwargs: dict, x: Val) -> Val:
        t = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 and isinstance(args[2], bool) else kwargs.get("keepdim", False)
        if dims is None or not isinstance(x, Val):
            return self.pinned(x) if isinstance(x, Val) else Val()
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d + t.dim() if d < 0 else d for d in dims]
        if x.dim in dims:
            return self.pinned(x)
        return Val(x.labels, x.dim if keep else x.dim - sum(d < x.dim for d in dims))

    def follow_shape(self, n: fx.Node, fn: Any, x: Val, x_t: Tensor, args: tuple = (), kwargs: Mapping = {},
                     result: Any = None) -> Any:
        """Run the same shape op on a probe tensor that holds each element's channel index."""
        c = x_t.shape[x.dim]
        shape = [1] * x_t.dim()
        shape[x.dim] = c
        probe = torch.arange(c).view(shape).expand(x_t.shape).contiguous()
        if fn is None:
            target = n.target
            rest = tuple(args[1:])
            fn = (lambda p: getattr(p, target)(*rest, **kwargs)) if n.op == "call_method" else \
                (lambda p: target(p, *rest, **kwargs))
        out = fn(probe)
        if isinstance(out, (tuple, list)):
            return [self.read_probe(o, x, c) for o in out]
        return self.read_probe(out, x, c)

    def read_probe(self, r: Tensor, x: Val, c: int) -> Val:
        varying = [k for k in range(r.dim()) if r.shape[k] > 1 and not torch.equal(r, r.narrow(k, 0, 1).expand_as(r))]
        if len(varying) != 1:
            return self.pinned(x)
        k = varying[0]
        idx = r.movedim(k, 0).reshape(r.shape[k], -1)[:, 0].numpy()
        if not _is_regular(idx, c):  # a slice or reorder of channels would shift once channels go
            return self.pinned(x)
        return Val(x.labels[idx], k)


def _is_regular(idx: np.ndarray, c: int) -> bool:
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
