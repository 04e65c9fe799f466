"""Llama-style blocks run leaner while the one-pass walk calls them: fewer fresh tensors, fewer held ones.

The one pass (:mod:`.onepass`) calls a block on every batch of windows and pauses each call at every target
layer until all have reached it, so whatever a call holds at a pause is held for every window at once.
Two things make that cheaper, with the same numbers:

- **MLP in place.** A Llama-style MLP computes ``down(act(gate(x)) * up(x))``: four fresh tensors of
  ``tokens × intermediate`` per call, three alive at once. With the activation applied to gate's output in
  place and up's output multiplied into it, two fresh tensors, two alive. Fresh tensors cost page faults and
  zeroing there (each large tensor is a memory map of its own,
  :func:`~prunekit.infra.machine.large_allocations_mapped`).
- **Norms and rotary embeddings in place.** A Llama-style RMSNorm makes three fresh tensors of the input's
  size (the square, the normalised input, the product with its weight); here the square's buffer takes the
  normalised input and the weight multiplies into it: one. Llama-style attention's rotary embedding
  (``q·cos + rotate_half(q)·sin``) makes five fresh tensors per projection (the product, the negated half, the
  concatenation, its product, the sum); here two: the rotated half is written into one buffer, multiplied by
  ``sin`` and added into ``q·cos`` in place.
- **Residual sums in place.** A Llama-style decoder layer adds its input to the attention's output, and that
  sum to the MLP's output, each into a fresh ``tokens × hidden`` tensor. Here each sum is written into the
  output it adds (a + b = b + a exactly) when that output is a plain ``nn.Linear``'s (``o_proj``, ``down_proj``)
  that no forward hook sees: two fresh tensors fewer per layer call.
- **Dead inputs freed.** In a Llama-style decoder layer the block's input is read last by the residual sum
  after attention, and the MLP's (normed) input last by ``up_proj``; yet the call's arguments and the
  layer's locals keep both alive while ``down_proj`` pauses. Their storage is released at those points
  (``Tensor.set_()``: the tensor objects stay, empty), so the pause at ``down_proj`` holds two of the four
  ``tokens × hidden``-or-wider tensors per window it held before.

Only modules whose ``forward`` is, byte for byte, transformers' ``LlamaMLP.forward`` /
``LlamaDecoderLayer.forward`` / ``LlamaRMSNorm.forward`` / ``LlamaAttention.forward`` (the same bytecode, names
and constants: Llama, Mistral, Qwen2/3, Gemma and the other families "copied from Llama"; for attention, its
module's ``apply_rotary_pos_emb`` and ``rotate_half`` too) are touched, and only while no gradient is recorded;
norms and rotary embeddings only on float32 tensors, attention only without a KV cache. Every other module runs
its own code and keeps its tensors. Every product and sum is the one transformers computes, on the same values
in the same order (a·b = b·a exactly), so the outputs are the same bit for bit.
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
from torch.nn.modules import module as torch_module


def _code(fn: Any) -> types.CodeType | None:
    return getattr(inspect.unwrap(fn), "__code__", None) if fn is not None else None


def _same_code(a: types.CodeType | None, b: types.CodeType | None) -> bool:
    return a is not None and b is not None and \
        (a.co_code, a.co_names, a.co_consts, a.co_argcount) == (b.co_code, b.co_names, b.co_consts, b.co_argcount)


@functools.cache
def _reference(name: str) -> types.CodeType | None:
    """The code of transformers' Llama ``name``: a class's ``forward``, or a function's own."""
    try:
        from transformers.models.llama import modeling_llama
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    obj = getattr(modeling_llama, name, None)
    return _code(getattr(obj, "forward", None) if isinstance(obj, type) else _plain_function(obj))


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


def is_llama_style_norm(module: nn.Module) -> bool:
    """Whether ``module.forward`` is LlamaRMSNorm's (``weight · x / rms(x)``, in float32) and it has a weight."""
    return "forward" not in vars(module) and isinstance(getattr(module, "weight", None), Tensor) and \
        _same_code(_code(getattr(type(module), "forward", None)), _reference("LlamaRMSNorm"))


def _globals_of_forward(module: nn.Module) -> dict[str, Any]:
    return getattr(inspect.unwrap(type(module).forward), "__globals__", {})


def _plain_function(fn: Any) -> Any:
    """``fn`` itself when it is a function; the function a ``kernels`` hub wrapper (the module transformers puts
    around ``apply_rotary_pos_emb`` when that package is installed) calls when no hub kernel is active for it;
    else None."""
    if inspect.isfunction(fn):
        return fn
    if not isinstance(fn, nn.Module) or "forward" in vars(fn):
        return None
    forward = getattr(type(fn).forward, "__code__", None)
    if forward is None or "func" not in forward.co_freevars:
        return None
    inner = type(fn).forward.__closure__[forward.co_freevars.index("func")].cell_contents
    active = type(fn).forward.__globals__.get("_ACTIVE_KERNEL_FUNCS")
    kernels = active.get() if active is not None else None
    return inner if inspect.isfunction(inner) and (not kernels or id(fn) not in kernels) else None


def is_llama_style_attention(module: nn.Module) -> bool:
    """Whether ``module.forward`` is LlamaAttention's, its module's ``apply_rotary_pos_emb`` and
    ``rotate_half`` are Llama's, and it has the four projections."""
    if "forward" in vars(module) or \
            not _same_code(_code(getattr(type(module), "forward", None)), _reference("LlamaAttention")):
        return False
    rotary = _plain_function(_globals_of_forward(module).get("apply_rotary_pos_emb"))
    half = _plain_function(getattr(rotary, "__globals__", {}).get("rotate_half"))
    return _same_code(_code(rotary), _reference("apply_rotary_pos_emb")) and \
        _same_code(_code(half), _reference("rotate_half")) and \
        all(isinstance(getattr(module, n, None), nn.Module) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))


def _norm_forward(self: nn.Module, x: Tensor) -> Tensor:
    w = self.weight
    if torch.is_grad_enabled() or x.dtype != torch.float32 or w.dtype != torch.float32 or \
            tuple(w.shape) != (x.shape[-1],):
        return type(self).forward(self, x)
    out = x.pow(2)
    variance = out.mean(-1, keepdim=True)
    torch.mul(x, torch.rsqrt(variance + self.variance_epsilon), out=out)  # the square's buffer, reused
    return out.mul_(w)  # weight · x, element by element: the same product


def _rotated(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x·cos + rotate_half(x)·sin`` (transformers' order and operations) with two fresh tensors."""
    out = x * cos
    half = x.shape[-1] // 2
    rest = x.shape[-1] - half
    r = torch.empty_like(out)
    torch.neg(x[..., half:], out=r[..., :rest])  # rotate_half: cat(−x₂, x₁)
    r[..., rest:].copy_(x[..., :half])
    return out.add_(r.mul_(sin))


def _attention_forward(self: nn.Module, hidden_states: Tensor, position_embeddings: Any = None,
                       attention_mask: Tensor | None = None, cache: Any = None, **kwargs: Any) -> Any:
    if torch.is_grad_enabled() or cache is not None or position_embeddings is None or \
            "past_key_values" in kwargs or \
            any(t.dtype != torch.float32 for t in (hidden_states, *position_embeddings)):
        return type(self).forward(self, hidden_states, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, cache=cache, **kwargs)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    query_states, key_states = _rotated(query_states, cos, sin), _rotated(key_states, cos, sin)
    g = _globals_of_forward(self)  # the names LlamaAttention.forward reads, from its own module
    attention_interface = g["ALL_ATTENTION_FUNCTIONS"].get_interface(self.config._attn_implementation,
                                                                    g["eager_attention_forward"])
    attn_output, attn_weights = attention_interface(
        self, query_states, key_states, value_states, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


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


def _hookless(*modules: nn.Module) -> bool:
    """Whether no forward hook (the modules' own or a global one) could see the modules' outputs."""
    return not torch_module._global_forward_hooks and not any(m._forward_hooks for m in modules)


def _plain_linear(module: Any) -> bool:
    """Whether ``module`` computes ``nn.Linear``'s forward (its output a fresh tensor nobody else holds)."""
    return isinstance(module, nn.Linear) and "forward" not in vars(module) and \
        _same_code(_code(type(module).forward), _code(nn.Linear.forward))


def _sum_into(fresh: Tensor, residual: Tensor, own: bool) -> Tensor:
    """``residual + fresh``, written into ``fresh`` when ``own`` (nobody else holds it) and the sum fits it: the
    same numbers (a + b = b + a exactly), one fresh tensor fewer."""
    if own and fresh._base is None and fresh.shape == residual.shape and not fresh.requires_grad and \
            fresh.dtype == torch.promote_types(fresh.dtype, residual.dtype):
        return fresh.add_(residual)
    return residual + fresh


def _layer_forward(lean_attention: bool, mlp_inside: Callable[[bool], None]) -> Callable[..., Tensor]:
    """LlamaDecoderLayer's forward, the two residual sums written into the attention's and the MLP's outputs
    where those are fresh, the layer's input freed once the first sum has read it, the MLP told it may free its
    own input. Transformers' forward runs whole with gradients or a KV cache."""

    def forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, cache: Any = None, use_cache: bool | None = False,
                position_embeddings: Any = None, **kwargs: Any) -> Tensor:
        if torch.is_grad_enabled() or cache is not None or "past_key_values" in kwargs:
            return type(self).forward(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
                                      **kwargs)
        attn = self.self_attn
        h, _ = attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                    position_ids=position_ids, cache=cache, use_cache=use_cache,
                    position_embeddings=position_embeddings, **kwargs)
        h = _sum_into(h, hidden_states, lean_attention and _plain_linear(attn.o_proj) and _hookless(attn, attn.o_proj))
        _release(hidden_states)  # the layer's input: read for the last time by the sum
        mlp = self.mlp
        mlp_inside(True)
        try:
            out = mlp(self.post_attention_layernorm(h))
        finally:
            mlp_inside(False)
        return _sum_into(out, h, _plain_linear(mlp.down_proj) and _hookless(mlp, mlp.down_proj))
    return forward


@contextlib.contextmanager
def lean_blocks(block: nn.Module) -> Iterator[tuple[int, int, int, int]]:
    """While inside, the Llama-style MLPs, norms and attentions' rotary embeddings of ``block`` run in place and
    its Llama-style decoder layers sum their residuals into fresh outputs and free the layer's input and its
    MLP's input once read for the last time (see the module's text); yields (MLPs, layers, norms, attentions)
    touched. Everything is back on leaving, also after an error."""
    layers = [m for m in block.modules() if is_llama_style_layer(m)]
    mlps = [m for m in block.modules() if is_llama_style_mlp(m)]
    norms = [m for m in block.modules() if is_llama_style_norm(m)]
    attentions = [m for m in block.modules() if is_llama_style_attention(m)]
    lean_attention = {id(m) for m in attentions}
    local = threading.local()  # each batch's call runs on a thread of its own (lockstep)

    def called_by_layer(mlp: nn.Module) -> Callable[[], bool]:  # whether its layer's lean forward called it
        return lambda: id(mlp) in getattr(local, "inside", ())

    def inside(mlp: nn.Module) -> Callable[[bool], None]:
        def mark(entering: bool) -> None:
            held = local.__dict__.setdefault("inside", set())
            (held.add if entering else held.discard)(id(mlp))
        return mark

    try:
        for m in mlps:
            m.forward = types.MethodType(_mlp_forward(called_by_layer(m)), m)
        for m in norms:
            m.forward = types.MethodType(_norm_forward, m)
        for m in attentions:
            m.forward = types.MethodType(_attention_forward, m)
        for layer in layers:
            layer.forward = types.MethodType(_layer_forward(id(layer.self_attn) in lean_attention, inside(layer.mlp)),
                                             layer)
        yield len(mlps), len(layers), len(norms), len(attentions)
    finally:
        for m in mlps + norms + attentions + layers:
            vars(m).pop("forward", None)
