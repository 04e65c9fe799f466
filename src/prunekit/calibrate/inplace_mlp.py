"""Gated MLPs run with their activation and product in place while a calibration walk calls them.

A Llama-style MLP computes ``down(act(gate(x)) * up(x))``: four fresh tensors of ``tokens × intermediate``
per call (gate's output, the activation's, up's, the product), three of them alive at once. Over a
calibration walk that is gigabytes of fresh pages: each large tensor is a memory map of its own there
(:func:`~prunekit.infra.machine.large_allocations_mapped`), so each one costs the kernel's page faults and
zeroing. Applying the activation to gate's output in place and multiplying up's output into it takes two
fresh tensors instead of four and holds two at once instead of three, with the same numbers (the same
operations on the same values, element for element).

Only MLPs whose ``forward`` is, byte for byte, transformers' ``LlamaMLP.forward`` (the same bytecode and
names: Llama, Mistral, Qwen2/3, Gemma and the other families "copied from Llama") get the in-place
forward, and only while no gradient is recorded; every other module runs its own code.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _reference_code() -> types.CodeType | None:
    try:
        from transformers.models.llama.modeling_llama import LlamaMLP
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return LlamaMLP.forward.__code__


def _silu_types() -> tuple[type, ...]:
    try:
        from transformers.activations import SiLUActivation
    except ImportError:  # pragma: no cover - older transformers
        return (nn.SiLU,)
    return (nn.SiLU, SiLUActivation)


def is_llama_style_mlp(module: nn.Module) -> bool:
    """Whether ``module.forward`` is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (LlamaMLP's
    bytecode and names) and the module has those four parts."""
    ref = _reference_code()
    forward = getattr(type(module), "forward", None)
    code = getattr(forward, "__code__", None)
    if ref is None or code is None or "forward" in vars(module):
        return False
    if (code.co_code, code.co_names, code.co_consts, code.co_argcount) != \
            (ref.co_code, ref.co_names, ref.co_consts, ref.co_argcount):
        return False
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj")) \
        and callable(getattr(module, "act_fn", None))


def _inplace_forward(self: nn.Module, x: Tensor) -> Tensor:
    if torch.is_grad_enabled():
        return type(self).forward(self, x)
    h = self.gate_proj(x)
    if type(self.act_fn) in _silu_types():  # transformers' SiLUActivation is F.silu
        h = F.silu(h, inplace=True)
    else:
        h = self.act_fn(h)
    up = self.up_proj(x)
    h = h.mul_(up) if h.shape == up.shape and h.dtype == torch.promote_types(h.dtype, up.dtype) else h * up
    del up
    return self.down_proj(h)


@contextlib.contextmanager
def inplace_gated_mlps(block: nn.Module) -> Iterator[int]:
    """While inside, every Llama-style MLP in ``block`` (see :func:`is_llama_style_mlp`) runs with its
    activation and product in place; yields how many. Their own ``forward`` is back on leaving, also after
    an error."""
    patched = [m for m in block.modules() if is_llama_style_mlp(m)]
    for m in patched:
        m.forward = types.MethodType(_inplace_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)
