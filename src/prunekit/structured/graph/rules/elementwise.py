"""Elementwise operations, and what every rule shares: tensor arguments, members, the names of each kind of
operation (which :func:`prunekit.structured.graph.rules.dispatch` sorts calls by). Elementwise: labels
carried, operands united, parameters that meet the channels become members (layer scales, norm weights,
position embeddings); an untracked full-width operand pins the channels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import Tensor

from ..depgraph import PVal, Val
from ..recorder import Recorder

CARRY = {  # same shape, values per element (or per channel) only: labels carried
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu",
    "selu", "celu", "softplus", "softsign", "mish", "logsigmoid", "tanhshrink", "threshold", "rrelu", "glu_",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous",
    "clone", "float", "double", "half", "bfloat16", "to", "type", "type_as", "detach", "cpu", "cuda",
    "requires_grad", "requires_grad_", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "fill", "zero", "normal", "uniform", "softmax", "log_softmax", "softmin", "normalize",
    "cumsum", "cumprod", "logcumsumexp", "local_response_norm", "nan_to_num", "sign", "sgn", "abs", "neg",
    "negative", "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "square", "reciprocal",
    "sin", "cos", "tan", "erf", "erfc", "erfinv", "floor", "ceil", "round", "trunc", "frac", "clamp", "clip",
    "clamp_min", "clamp_max", "isnan", "isinf", "isfinite", "logical_not", "bitwise_not", "data", "real",
    "silu_", "gelu_", "sigmoid_", "tanh_", "relu_", "hardswish_", "leaky_relu_", "elu_", "hardtanh_",
    "relu6_", "hardsigmoid_", "mish_", "celu_", "selu_", "threshold_", "pin_memory", "coalesce", "abs_",
    "neg_", "exp_", "sqrt_", "rsqrt_", "reciprocal_", "clamp_", "clip_", "clamp_min_", "clamp_max_", "floor_",
    "ceil_", "round_", "erf_", "log_", "nan_to_num_", "dropout_", "contiguous_", "detach_", "float_power",
}
BINARY = {
    "add", "sub", "mul", "div", "truediv", "floordiv", "radd", "rsub", "rmul", "rtruediv", "rdiv", "rfloordiv",
    "iadd", "isub", "imul", "itruediv", "idiv", "pow", "rpow", "ipow", "maximum", "minimum", "fmax", "fmin",
    "where", "masked_fill", "addcmul", "addcdiv", "lerp", "copy_", "atan2", "remainder", "fmod", "eq", "ne", "lt",
    "le", "gt", "ge", "and", "or", "xor", "rand", "ror", "logical_and", "logical_or", "hypot", "mod", "xlogy",
    "add_", "sub_", "mul_", "div_", "pow_", "masked_fill_", "addcmul_", "addcdiv_", "lerp_", "maximum_",
    "true_divide", "multiply", "subtract", "divide", "heaviside", "copysign", "clamp_tensor", "prelu_",
}
PIN_IF_TRACKED_DIM = {"sort", "argsort", "topk", "kthvalue", "msort", "cummax", "cummin", "argmax", "argmin",
                      "unique", "unique_consecutive", "searchsorted", "bucketize", "histc", "mode", "median"}
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod", "all", "any",
              "nansum", "nanmean", "count_nonzero", "var_mean", "std_mean", "aminmax", "vector_norm", "nanmedian",
              "median", "mode"}
TEMPLATE_ARGS = {"type_as", "to", "new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like",
                 "empty_like", "full_like", "rand_like", "randn_like"}
PRODUCERS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "embedding",
             "embedding_bag", "linear", "matmul", "rmatmul", "mm", "bmm", "addmm", "baddbmm", "einsum",
             "_grouped_mm", "grouped_mm"}
WRITES = {"setitem", "index_put_", "scatter_", "masked_scatter_", "index_fill_"}
UNTRACKED = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "arange", "zeros", "ones", "full",
             "empty", "tensor", "as_tensor", "randn", "rand", "randint", "linspace", "eye", "size", "dim", "numel", "item", "tolist", "shape", "stride", "element_size", "is_contiguous",
             "data_ptr", "len", "bool", "nonzero", "argwhere", "get_device", "is_floating_point", "storage_offset",
             "format", "repr", "hash", "index", "int", "nelement", "ndimension", "equal", "allclose",
             "is_complex", "isclose_"}


def tensor_args(args: tuple, kwargs: dict) -> list[Tensor]:
    out: list[Tensor] = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += [x for x in a if isinstance(x, Tensor)]
    return out


def base_name(name: str) -> str:
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _has_tensor(result: Any) -> bool:
    if isinstance(result, Tensor):
        return True
    return isinstance(result, (tuple, list)) and any(isinstance(r, Tensor) for r in result)


def merge_params(rec: Recorder, args: tuple, kwargs: dict, result: Tensor) -> PVal | None:
    """The parameter sources of an elementwise result computed from parameters (and constants) only."""
    sources = []
    for t in tensor_args(args, kwargs):
        info = rec.info(t)
        if info is None:
            if t.numel() > 1:
                return None  # computed from something that is not a parameter: not sliceable
            continue
        shift = result.dim() - t.dim()
        for name, dmap in info.sources:
            sources.append((name, (None,) * shift + tuple(d if t.shape[i] > 1 else None for i, d in enumerate(dmap))))
    return PVal(tuple(sources)) if sources else None


def carry(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """Same-shape operations: the first tensor's labels carry to the result (and to in-place targets)."""
    first = next((a for a in args if isinstance(a, Tensor)), None)
    if first is None:
        first = next((a for a in kwargs.values() if isinstance(a, Tensor)), None)
    info = rec.info(first)
    others = [rec.info(t) for t in tensor_args(args, kwargs) if t is not first]
    if isinstance(result, Tensor) and first is not None and result.shape == first.shape:
        rec.set(result, info)
        if base_name(name) not in TEMPLATE_ARGS:  # type_as / to(other) read only the other's dtype
            rec.pin([o for o in others if isinstance(o, Val)], f"{name} in {rec.where!r} mixes two tensors")
        return
    rec.pin(info, f"{name} in {rec.where!r} changed the shape")
    rec.set_all(result, None)


def elementwise(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """Broadcasting elementwise operations: tracked operands are united; parameters along the tracked
    dimension become members; an untracked full-width operand pins the channels."""
    if not isinstance(result, Tensor):
        rec.set_all(result, None)
        return
    nd = result.dim()
    out: Val | None = None
    operands = [(t, rec.info(t)) for t in tensor_args(args, kwargs)]
    for t, info in operands:
        if not isinstance(info, Val):
            continue
        v = shifted(info, nd - t.dim())
        if out is None:
            out = v
        elif v.dims == out.dims and v.labels.shape == out.labels.shape:
            rec.g.union(out.labels, v.labels)
        elif _flat_meets_block(rec, out, v):
            out = v if v.flat else out  # a block's fixed axes are united already: the flat labels describe both
        else:
            rec.g.pin(out.labels, f"{name} in {rec.where!r} meets channels along another dimension")
            rec.g.pin(v.labels, f"{name} in {rec.where!r} meets channels along another dimension")
            out = None
            break
    if out is None:
        for _, info in operands:
            rec.pin(info, f"{name} in {rec.where!r}")
        rec.set(result, None)
        return
    for t, info in operands:
        if isinstance(info, Val):
            continue
        shift = nd - t.dim()
        for ax, d in enumerate(out.dims):
            td = d - shift
            if td < 0 or t.shape[td] == 1:
                continue
            if isinstance(info, PVal) and out.flat:
                param_members(rec, info, td, out.labels, "param", f"is combined with the channels after a reshape "
                                                                      f"({rec.where!r})")
            else:
                why = "a parameter along split channels" if isinstance(info, PVal) else "a tensor the graph cannot cut"
                rec.g.pin(out.labels, f"{name} in {rec.where!r} combines the channels with {why}")
    rec.set(result, out)


def line(v: Val) -> np.ndarray:
    """The labels along a Val's free axis (index 0 along its fixed axes)."""
    if v.labels.ndim == 1:
        return v.labels
    idx: list[Any] = [0] * v.labels.ndim
    idx[v.free] = slice(None)
    return v.labels[tuple(idx)]


def _flat_meets_block(rec: Recorder, a: Val, b: Val) -> bool:
    """A flat operand along a block's free dimension (SK-Net's per-path attention on stacked paths):
    unite it with the block's free-axis labels. True when that applied."""
    flat, block = (a, b) if a.flat else (b, a)
    if not flat.flat or block.flat or flat.dim != block.dims[block.free] \
            or len(flat.labels) != block.labels.shape[block.free]:
        return False
    rec.g.union(flat.labels, line(block))
    return True


def shifted(v: Val, shift: int) -> Val:
    return v if shift == 0 else Val(v.labels, tuple(d + shift for d in v.dims), v.free)


def param_members(rec: Recorder, info: PVal, dim: int, labels: np.ndarray, role: str, after_reshape: str) -> None:
    """Every parameter behind ``info`` whose dimension ``dim`` (of the tensor as used) runs along the channels
    ``labels`` becomes a member there; one that reaches it only through a reshape pins the channels
    ("<name> <after_reshape>")."""
    for pname, dmap in info.sources:
        pd = dmap[dim] if dim < len(dmap) else None
        if pd is None:
            rec.g.pin(labels, f"{pname} {after_reshape}")
        else:
            tensor_member(rec, pname, pd, labels, role)


def tensor_member(rec: Recorder, tensor: str, dim: int, labels: np.ndarray, role: str) -> None:
    """Make dimension ``dim`` of parameter/buffer ``tensor`` a member with ``labels``."""
    mname, mod, _ = rec.module_of(tensor)
    rec.g.add_member(tensor, dim, mname, role, labels, mod)
