"""FastV-style prompt pruning for decoder LLMs, through ``generate`` and the KV cache.

At prefill, layers ``0 … K-1`` see the whole prompt. The attention of layer ``K-1`` ranks the prompt
tokens — read beside the fused kernel, by giving that one attention module a private config whose
``_attn_implementation`` names a function registered in transformers' ``AttentionInterface``: it
runs the model's own implementation (``sdpa`` or ``eager``) and also computes the last query's
attention row (O(N), or one full map for ``score="mean"``). Layers ``K …`` then get only the kept
tokens — hidden states, rotary cos/sin, position ids and the causal mask gathered at the kept
positions — so their KV cache holds only those. Later forwards (decoding, or a continuation scored
with the cache) are not pruned; in layers ``K …`` a mask over every position is cut to the kept
prompt positions plus everything after the prompt.

Supported: Llama, Mistral, Qwen2 and Qwen3 decoders in transformers 5.24 with full attention (no
sliding window), ``sdpa`` or ``eager`` attention and a ``DynamicCache`` (the default of
``generate``). Beam search over a *padded* batch is not supported (the kept positions are per row).
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import FastVConfig
from .encoders import UnsupportedModel
from .importance import causal_mean_importance, last_token_importance, random_importance, top_tokens

PROBE_IMPL = "prunekit_tokens_score"
_registered = False


def _register_probe() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(PROBE_IMPL, scoring_attention)
    _registered = True


@dataclass
class Probe:
    """What the scoring attention needs: the runtime to report to and the implementation to run."""

    runtime: "FastVRuntime"
    impl: str
    eager: Any


def scoring_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any):
    """The attention function of the scoring layer: the model's own implementation, plus the
    ranking of the keys when a prefill asks for it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    probe: Probe = module.__dict__["_prunekit_probe"]
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(probe.impl, probe.eager)
    out = fn(module, query, key, value, attention_mask, **kwargs)
    rt = probe.runtime
    if rt.want_scores:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        with torch.no_grad():
            if rt.cfg.score == "last":
                rt.scores = last_token_importance(query, key, scaling, attention_mask)
            else:
                rt.scores = causal_mean_importance(query, key, scaling, attention_mask)
        rt.want_scores = False
    return out


def prompt_kept(prompt: int, keep: float, recent: int) -> int:
    """Prompt tokens kept out of ``prompt`` at fraction ``keep``, never fewer than ``recent`` (or 1)."""
    return min(prompt, max(recent, 1, int(math.floor(keep * prompt + 0.5))))


def _gather_tokens(x: torch.Tensor, kept: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather ``x`` at the kept positions along ``dim`` (dim 1 of a (b, N, …) tensor; b may be 1)."""
    bsz = kept.shape[0]
    x = x.expand(bsz, *x.shape[1:]) if x.shape[0] == 1 and bsz > 1 else x
    shape = [1] * x.dim()
    shape[0], shape[dim] = bsz, kept.shape[1]
    index = kept.view(shape).expand(*[s if d != dim else kept.shape[1] for d, s in enumerate(x.shape)])
    return x.gather(dim, index)


@dataclass
class FastVRuntime:
    """State shared by the wrapped decoder layers of one patched model."""

    cfg: FastVConfig
    num_layers: int
    want_scores: bool = False
    active: bool = False
    scores: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    prompt_len: int = 0
    n_keep: int = 0
    memo: dict[int, Any] = field(default_factory=dict)
    last: dict[str, Any] | None = None

    def begin(self, h: torch.Tensor, cache: Any) -> None:
        q_len = h.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        self.memo = {}
        if cache is not None:
            for i, layer in enumerate(getattr(cache, "layers", [])):
                if i >= self.cfg.layer and type(layer).__name__ != "DynamicLayer":
                    raise UnsupportedModel(f"FastV pruning needs a DynamicCache (full attention); cache layer {i} is a "
                                           f"{type(layer).__name__}")
        if past == 0:
            self.kept = None
            n_keep = prompt_kept(q_len, self.cfg.keep, self.cfg.recent)
            self.active = q_len > 1 and n_keep < q_len
            self.want_scores = self.active and self.cfg.score in ("last", "mean")
            self.scores = None
            self.prompt_len, self.n_keep = q_len, (n_keep if self.active else q_len)
            self.last = {"prompt_tokens": q_len, "kept_tokens": self.n_keep, "layer": self.cfg.layer,
                         "tokens_per_layer": [q_len] * self.cfg.layer + [self.n_keep] * (self.num_layers - self.cfg.layer)}
        else:
            self.active = False
            self.want_scores = False

    def choose(self, h: torch.Tensor) -> torch.Tensor:
        p = self.prompt_len
        if self.cfg.score == "recent":
            self.scores = torch.arange(p, device=h.device, dtype=torch.float32).expand(h.shape[0], -1)
        elif self.cfg.score == "random":
            self.scores = random_importance(h.shape[0], p, self.cfg.seed, h.device)
        if self.scores is None:
            raise RuntimeError("FastV: the scoring layer produced no attention scores; was its attention bypassed?")
        scores = self.scores.clone()
        scores[:, p - self.cfg.recent:] = math.inf
        self.kept = top_tokens(scores, self.n_keep, 0)
        self.scores = None
        if self.last is not None:
            self.last["kept_positions"] = self.kept[0].tolist()
        return self.kept

    def slice_prefill(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        key = id(value)
        if key in self.memo:
            return self.memo[key][1]
        kept = self.kept
        if name == "position_embeddings":
            out = tuple(_gather_tokens(t, kept, 1) for t in value)
        elif name == "position_ids":
            out = _gather_tokens(value, kept, 1)
        elif name == "attention_mask":
            if not isinstance(value, torch.Tensor):
                raise UnsupportedModel(f"FastV pruning needs a tensor attention mask, got {type(value).__name__} "
                                       "(use attn_implementation='sdpa' or 'eager')")
            out = _gather_tokens(_gather_tokens(value, kept, value.dim() - 2), kept, value.dim() - 1)
        else:
            out = value
        self.memo[key] = (value, out)  # hold the original so its id stays unique during this forward
        return out

    def slice_decode_mask(self, mask: Any, layer_idx: int, cache: Any, q_len: int) -> Any:
        if not isinstance(mask, torch.Tensor) or cache is None:
            return mask
        kv_full = mask.shape[-1]
        have = cache.layers[layer_idx].get_seq_length() + q_len if layer_idx < len(cache.layers) else kv_full
        if have == kv_full:
            return mask
        if self.kept is None or self.n_keep + kv_full - self.prompt_len != have:
            raise RuntimeError(f"FastV: KV cache layer {layer_idx} holds {have - q_len} entries, which matches neither "
                               f"the full length nor this model's last pruned prefill; the cache did not come from it")
        key = ("decode", id(mask))
        if key in self.memo:
            return self.memo[key][1]
        bsz = self.kept.shape[0]
        after = torch.arange(self.prompt_len, kv_full, device=mask.device).expand(bsz, -1)
        cols = torch.cat([self.kept, after], dim=1)
        out = _gather_tokens(mask, cols, mask.dim() - 1)
        self.memo[key] = (mask, out)
        return out


_PRUNED_ARGS = ("attention_mask", "position_embeddings", "position_ids")


class DecoderLayerForward:
    """The forward that replaces decoder layer 0 (starts a forward) and layers K… (see kept tokens)."""

    def __init__(self, runtime: FastVRuntime, index: int, original: Any) -> None:
        self.runtime = runtime
        self.index = index
        self.original = original
        self._sig = None

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        if len(args) <= 1:
            out = dict(kwargs)
            if args:
                out["hidden_states"] = args[0]
            return out
        if self._sig is None:
            self._sig = inspect.signature(self.original)
        bound = self._sig.bind(*args, **kwargs)
        out = dict(bound.arguments)
        extra = [n for n, p in self._sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
        for n in extra:
            out.update(out.pop(n, {}))
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = self.runtime
        call = self._bind(args, kwargs)
        h = call["hidden_states"]
        cache = call.get("cache", call.get("past_key_values"))
        if self.index == 0:
            rt.begin(h, cache)
        if self.index >= rt.cfg.layer:
            if rt.active:
                if self.index == rt.cfg.layer:
                    kept = rt.choose(h)
                    call["hidden_states"] = _gather_tokens(h, kept, 1)
                for name in _PRUNED_ARGS:
                    if name in call:
                        call[name] = rt.slice_prefill(name, call[name])
            elif "attention_mask" in call:
                call["attention_mask"] = rt.slice_decode_mask(call["attention_mask"], self.index, cache, h.shape[1])
        hidden = call.pop("hidden_states")
        return self.original(hidden, **call)


def check_decoder(decoder: nn.Module, family: str) -> None:
    """Refuse the decoder set-ups FastV pruning does not handle (before anything changes)."""
    config = decoder.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        raise UnsupportedModel(f"FastV pruning supports attn_implementation 'sdpa' or 'eager'; this model uses {impl!r}")
    types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in types) or (getattr(config, "use_sliding_window", None) is True) or (
            family == "mistral" and getattr(config, "sliding_window", None) is not None):
        raise UnsupportedModel(f"FastV pruning supports full-attention decoders; this {family} model uses sliding-window "
                               "attention")
    for i, layer in enumerate(decoder.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "config") or getattr(attn, "layer_idx", i) != i:
            raise UnsupportedModel(f"decoder layer {i} ({type(layer).__name__}) has no self_attn with a config and "
                                   "layer_idx; FastV pruning cannot read its attention")


def install_fastv(decoder: nn.Module, cfg: FastVConfig, record: Any) -> FastVRuntime:
    """Wrap layer 0 and layers ``cfg.layer …`` of ``decoder`` and give layer ``cfg.layer - 1``'s attention
    the scoring implementation; every change goes through ``record``."""
    _register_probe()
    layers = list(decoder.layers)
    rt = FastVRuntime(cfg=cfg, num_layers=len(layers))
    for i, layer in enumerate(layers):
        if i == 0 or i >= cfg.layer:
            record.set(layer, "forward", DecoderLayerForward(rt, i, layer.forward))
    attn = layers[cfg.layer - 1].self_attn
    impl = getattr(attn.config, "_attn_implementation", None) or "eager"
    eager = getattr(inspect.getmodule(type(attn)), "eager_attention_forward", None)
    if eager is None:
        raise UnsupportedModel(f"{type(attn).__name__} has no eager_attention_forward beside it")
    private = copy.copy(attn.config)
    private.__dict__["_attn_implementation_internal"] = PROBE_IMPL
    record.set(attn, "_prunekit_probe", Probe(rt, impl, eager))
    record.set(attn, "config", private)
    return rt
