"""The one MAC counter: multiply-accumulates of one forward pass, counted at the torch-function level.

Every call of the model's forward passes through a ``TorchFunctionMode``; the calls that multiply and
add are counted by formula from their shapes, whichever module, function or Tensor method runs them:

- ``linear`` (``nn.Linear``, ``F.linear``): ``out.numel() × in_features``;
- ``conv{1,2,3}d``: ``out.numel() × in_channels/groups × kernel size`` (grouped and depthwise too);
  ``conv_transpose{1,2,3}d``: ``in.numel() × out_channels/groups × kernel size``;
- ``matmul``/``@``, ``mm``, ``bmm``, ``mv``, ``dot``, ``addmm`` (GPT-2's ``Conv1D``), ``baddbmm``,
  ``addbmm``, ``addmv``: ``out.numel() × the contracted size`` (× the batch for ``addbmm``);
- ``einsum``: the product of the sizes of all its indices (exact for two operands; for three or more,
  one contraction over all indices: an upper bound);
- attention: ``scaled_dot_product_attention`` ``L·S·E`` for the scores and ``L·S·Ev`` for the values
  per batch and head (the whole ``L × S`` square, also under a causal mask, as dense kernels compute
  it); ``nn.MultiheadAttention`` its four projections plus scores and values; ``F.bilinear``.

Elementwise work (activations, norms, softmax, residual additions, biases), pooling, embedding lookups
and recurrent layers count 0. A call is counted once: the calls a counted function makes inside are not
seen again. ``macs_by_module`` also says which module ran each call (the innermost one being called).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ..infra.calling import call_model

# The version of this counter. Stored results name the counter that counted their MACs (the bench store keeps it
# in each run's protocol card, and runs counted by different counters are never compared): bump it whenever a
# formula above changes what a model counts.
COUNTER = "torch-function/1"

CONV = ("conv1d", "conv2d", "conv3d")
CONV_T = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
PRODUCTS = ("matmul", "mm", "bmm", "rmatmul", "mv", "dot")


@dataclass
class MacCount:
    """MACs of one forward pass: the total, per module (qualified name, ``""`` for calls the model's own
    forward makes outside any submodule) and per torch function."""

    total: int = 0
    modules: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)


def _name(func: Callable) -> str:
    """``torch.nn.functional.linear`` → ``linear``; ``Tensor.__matmul__`` → ``matmul``."""
    name = getattr(func, "__name__", None) or str(func)
    return name[2:-2] if name.startswith("__") and name.endswith("__") else name


def _arg(args: tuple, kwargs: dict, i: int, key: str) -> Any:
    return args[i] if len(args) > i else kwargs[key]


def _einsum(args: tuple) -> int:
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if len(ops) < 2:
        return 0
    specs = args[0].replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []
    for spec, t in zip(specs, ops):
        named = spec.replace("...", "")
        if "..." in spec:  # the dims "..." stands for, broadcast over the operands
            start = spec.index("...")
            dims = list(t.shape[start: t.dim() - (len(named) - start)])
            if len(dims) > len(ellipsis):
                ellipsis = [1] * (len(dims) - len(ellipsis)) + ellipsis
            for j, n in enumerate(reversed(dims)):
                ellipsis[-1 - j] = max(ellipsis[-1 - j], n)
            shape = list(t.shape[:start]) + list(t.shape[t.dim() - (len(named) - start):])
        else:
            shape = list(t.shape)
        for c, n in zip(named, shape):
            sizes[c] = max(sizes.get(c, 1), n)
    return math.prod(sizes.values()) * math.prod(ellipsis)


def macs_of_call(name: str, args: tuple, kwargs: dict, out: Any) -> int:
    """MACs of one torch-function call ``name(*args, **kwargs) -> out`` (0 for a call that is not counted)."""
    if name in CONV:
        return out.numel() * math.prod(_arg(args, kwargs, 1, "weight").shape[1:])
    if name in CONV_T:
        return _arg(args, kwargs, 0, "input").numel() * math.prod(_arg(args, kwargs, 1, "weight").shape[1:])
    if name == "linear":
        return out.numel() * _arg(args, kwargs, 1, "weight").shape[-1]
    if name == "bilinear":
        w = _arg(args, kwargs, 2, "weight")
        return out.numel() * w.shape[1] * w.shape[2]
    if name in PRODUCTS:
        a = args[1] if name == "rmatmul" else args[0]
        return (out.numel() if out.dim() else 1) * a.shape[-1]
    if name in ("addmm", "baddbmm", "addmv"):
        return out.numel() * args[1].shape[-1]
    if name == "addbmm":  # sums the batch of products into one matrix
        return out.numel() * args[1].shape[0] * args[1].shape[-1]
    if name == "einsum":
        return _einsum(args)
    if name == "scaled_dot_product_attention":
        q, k, v = args[0], args[1], args[2]
        return q.numel() * k.shape[-2] + out.numel() * v.shape[-2]
    if name in ("multi_head_attention_forward", "_native_multi_head_attention"):
        q, k, v = args[0], args[1], args[2]
        e = args[3]  # embed_dim
        tokens_k = k.shape[1] if name == "_native_multi_head_attention" else k.shape[0]  # batch first there
        projections = (2 * q.numel() + k.numel() + v.numel()) * e  # q, k, v in; out
        return projections + 2 * q.numel() * tokens_k
    return 0


class _Counter(TorchFunctionMode):
    def __init__(self, where: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.where = where
        self.count = MacCount(modules=defaultdict(int), ops=defaultdict(int))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        try:
            n = macs_of_call(name, args, kwargs, out)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # an unusual signature
            n = 0
        if n:
            self.count.total += n
            self.count.ops[name] += n
            if self.where is not None:
                self.count.modules[self.where()] += n
        return out


def _run(model: nn.Module, inputs: Any, by_module: bool) -> MacCount:
    stack = [""]
    handles = []
    if by_module:
        names = {id(m): n for n, m in model.named_modules()}

        def enter(module: nn.Module, args: Any) -> None:
            stack.append(names.get(id(module), stack[-1]))

        def leave(module: nn.Module, args: Any, out: Any) -> None:
            stack.pop()

        for n, m in model.named_modules():
            if n and ".parametrizations" not in n and not isinstance(m, parametrize.ParametrizationList):
                handles.append(m.register_forward_pre_hook(enter))
                handles.append(m.register_forward_hook(leave, always_call=True))
    counter = _Counter((lambda: stack[-1]) if by_module else None)
    modes = [(m, m.training) for m in model.modules()]  # each module's own mode comes back afterwards
    try:
        model.eval()
        with torch.no_grad(), counter:
            call_model(model, inputs)
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    c = counter.count
    return MacCount(int(c.total), dict(c.modules), dict(c.ops))


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` (in eval mode, no grad) on ``inputs``:
    every convolution, linear layer, matrix product, einsum and attention, whichever module or
    function runs it (see the module docstring for the formulas)."""
    return _run(model, inputs, by_module=False).total


def macs_by_module(model: nn.Module, inputs: Any) -> MacCount:
    """Like :func:`count_macs`, with the MACs of each module (the calls it makes itself, not its
    children's: attention products land on the attention module, a Linear's on the Linear) and of
    each torch function."""
    return _run(model, inputs, by_module=True)
