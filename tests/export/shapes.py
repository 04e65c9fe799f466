"""Tiny models of the shapes a shrink produces, for the GGUF tests: a heterogeneous Llama (different query /
KV head counts and feed-forward lengths per layer, sliced from a tiny model's own weights) and a tiny Gemma 3."""

from __future__ import annotations

import torch

from .conftest import make_llama

# (query heads, KV heads, feed-forward length) per layer; head_dim 16, two query heads per KV head throughout
LAYERS = [(2, 1, 96), (4, 2, 128), (4, 2, 32)]


def _keep(linear: torch.nn.Linear, rows: slice | None = None, cols: slice | None = None) -> torch.nn.Linear:
    w = linear.weight.data
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    out.weight.data = w.clone()
    return out


def heterogeneous_llama(vocab: int, layers=LAYERS, seed: int = 0):
    """A Llama whose layer i keeps the first ``layers[i]`` heads / KV heads / neurons of a 4-head, 2-KV-head,
    128-neuron tiny model (the config still says the dense widths: the exporter reads the weights)."""
    model = make_llama(vocab, seed=seed, num_hidden_layers=len(layers), initializer_range=0.1)
    head = 16
    for block, (h, kv, ff) in zip(model.model.layers, layers):
        a, m = block.self_attn, block.mlp
        a.q_proj = _keep(a.q_proj, rows=slice(0, h * head))
        a.k_proj = _keep(a.k_proj, rows=slice(0, kv * head))
        a.v_proj = _keep(a.v_proj, rows=slice(0, kv * head))
        a.o_proj = _keep(a.o_proj, cols=slice(0, h * head))
        a.num_key_value_groups = h // kv
        m.gate_proj = _keep(m.gate_proj, rows=slice(0, ff))
        m.up_proj = _keep(m.up_proj, rows=slice(0, ff))
        m.down_proj = _keep(m.down_proj, cols=slice(0, ff))
    return model.eval()


def tiny_gemma3(vocab: int, seed: int = 0, **overrides):
    """A 3-layer Gemma 3 (sliding, sliding, global; window 4) with random weights and random norm weights."""
    from prunekit.models.tiny import tiny_model

    torch.manual_seed(seed)
    fields = dict(vocab_size=vocab, num_hidden_layers=3, query_pre_attn_scalar=24, max_position_embeddings=256,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention"], bos_token_id=0,
                  eos_token_id=0, pad_token_id=0, initializer_range=0.1)
    fields.update(overrides)
    model = tiny_model("gemma3", **fields)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)  # Gemma's norms start at 0 (the layer multiplies by 1 + w): make them matter
    return model.eval()
