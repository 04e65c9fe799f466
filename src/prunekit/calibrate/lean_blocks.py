"""Llama-style blocks run leaner while the one-pass walk calls them: fewer fresh tensors, fewer held ones.

The one pass (:mod:`.onepass`) calls a block on every batch of windows and pauses each call at every target
layer until all have reached it, so whatever a call holds at a pause is held for every window at once.
Two things make that cheaper, with the same numbers:

- **MLP in place.** A Llama-style MLP computes ``down(act(gate(x)) * up(x))``: four fresh tensors of
  ``tokens × intermediate`` per call, three alive at once. With the activation applied to gate's output in
  place and up's output multiplied into it, two fresh tensors, two alive. Fresh tensors cost page faults and
  zeroing there (each large tensor is a memory map of its own,
  :func:`~prunekit.infra.machine.large_allocations_mapped`).
- **Dead inputs freed.** In a Llama-style decoder layer the block's input is read last by the residual sum
  after attention, and the MLP's (normed) input last by ``up_proj``; yet the call's arguments and the
  layer's locals keep both alive while ``down_proj`` pauses. Their storage is released at those points
  (``Tensor.set_()``: the tensor objects stay, empty), so the pause at ``down_proj`` holds two of the four
  ``tokens × hidden``-or-wider tensors per window it held before.

Only modules whose ``forward`` is, byte for byte, transformers' ``LlamaMLP.forward`` /
``LlamaDecoderLayer.forward`` (the same bytecode, names and constants: Llama, Mistral, Qwen2/3, Gemma and the
other families "copied from Llama") are touched, and only while no gradient is recorded; every other module
runs its own code and keeps its tensors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import types
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _code(fn: Any) -> types.CodeType | None:
    return getattr(inspect.unwrap(fn), "__code__", None) if fn is not None else None


def _same_code(a: types.CodeType | None, b: types.CodeType | None) -> bool:
    return a is not None and b is not None and \
        (a.co_code, a.co_names, a.co_consts, a.co_argcount) == (b.co_code, b.co_names, b.co_consts, b.co_argcount)


@functools.cache
def _reference(name: str) -> types.CodeType | None:
    try:
        from transformers.models.llama import modeling_llama
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return _code(getattr(modeling_llama, name).forward)


@functools.cache
def _silu_types() -> tuple[type, ...]:
    try:
        from transformers.activations import SiLUActivation
    except ImportError:  # pragma: no cover - older transformers
        return (nn.SiLU,)
    return (nn.SiLU, SiLUActivation)


def is_llama_style_mlp(module: nn.Module) -> bool:
    """Whether ``module.forward`` is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (LlamaMLP's
    bytecode and names) and the module has those four parts."""
    if "forward" in vars(module) or not _same_code(_code(getattr(type(module), "forward", None)), _reference("LlamaMLP")):
        return False
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj")) \
        and callable(getattr(module, "act_fn", None))


def is_llama_style_layer(module: nn.Module) -> bool:
    """Whether ``module.forward`` is LlamaDecoderLayer's (residual + attention, residual + MLP on
    ``post_attention_layernorm``'s output) and its ``mlp`` is Llama-style."""
    if "forward" in vars(module) or \
            not _same_code(_code(getattr(type(module), "forward", None)), _reference("LlamaDecoderLayer")):
        return False
    return isinstance(getattr(module, "post_attention_layernorm", None), nn.Module) and \
        is_llama_style_mlp(getattr(module, "mlp", None) or nn.Module())


def _release(x: Any) -> None:
    """Free a dead tensor's storage (the object stays, empty); leaves anything else alone."""
    if isinstance(x, Tensor) and not x.requires_grad and not torch.is_grad_enabled():
        x.set_()


def _mlp_forward(release_input: Callable[[], bool]) -> Callable[[nn.Module, Tensor], Tensor]:
    def forward(self: nn.Module, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return type(self).forward(self, x)
        h = self.gate_proj(x)
        own = h._base is None  # a fresh tensor, not a view of a buffer a fused projection shares
        h = F.silu(h, inplace=True) if own and type(self.act_fn) in _silu_types() else self.act_fn(h)
        up = self.up_proj(x)
        if release_input():  # called by its Llama-style layer, which reads the MLP's input no more
            _release(x)
        fits = h.shape == up.shape and h.dtype == torch.promote_types(h.dtype, up.dtype)
        h = h.mul_(up) if fits and h._base is None and up._base is None else h * up
        del up
        return self.down_proj(h)
    return forward


@contextlib.contextmanager
def lean_blocks(block: nn.Module) -> Iterator[tuple[int, int]]:
    """While inside, the Llama-style MLPs of ``block`` run in place and, in its Llama-style decoder layers, the
    layer's input and its MLP's input are freed once read for the last time (see the module's text); yields
    (MLPs, layers) touched. Everything is back on leaving, also after an error."""
    layers = [m for m in block.modules() if is_llama_style_layer(m)]
    owner = {id(layer.mlp): id(layer) for layer in layers}
    mlps = [m for m in block.modules() if is_llama_style_mlp(m)]
    local = threading.local()  # each batch's call runs on a thread of its own (lockstep)
    handles = []

    def inputs() -> dict[int, Any]:  # layer id → its input, for the layers this thread is inside of
        if not hasattr(local, "inputs"):
            local.inputs = {}
        return local.inputs

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs()[id(module)] = args[0] if args else kwargs.get("hidden_states")

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        inputs().pop(id(module), None)

    def drop_input(layer: nn.Module):
        def hook(module: nn.Module, args: tuple) -> None:  # after the attention's residual sum
            held = inputs()
            if id(layer) in held:
                _release(held[id(layer)])
                held[id(layer)] = None  # still inside the layer's call
        return hook

    def inside(mlp: nn.Module) -> Callable[[], bool]:
        return lambda: owner.get(id(mlp)) in inputs()

    try:
        for m in mlps:
            m.forward = types.MethodType(_mlp_forward(inside(m)), m)
        for layer in layers:
            handles.append(layer.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(layer.register_forward_hook(leave, always_call=True))
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(drop_input(layer)))
        yield len(mlps), len(layers)
    finally:
        for h in handles:
            h.remove()
        for m in mlps:
            vars(m).pop("forward", None)
