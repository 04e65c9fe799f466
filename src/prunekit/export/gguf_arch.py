"""What a decoder's architecture says in a GGUF file's metadata (:mod:`prunekit.export.gguf`): every block's widths
read from its weights and checked (:func:`layer_shapes`), the rotary settings, and the checks and hyperparameters
of the llama and gemma3 architectures llama.cpp runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn


def rope_settings(config: Any) -> tuple[float, str, float | None]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None) or {}
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0) or 10000.0))
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    factor = params.get("factor", legacy.get("factor"))
    return theta, kind, factor


@dataclass(frozen=True)
class LayerShape:
    """One decoder block's widths as its weights hold them: query heads, KV heads, feed-forward length."""

    heads: int
    kv_heads: int
    ff: int


def head_dim_of(model: nn.Module, config: Any) -> int:
    """The per-head width: the attention module's own ``head_dim`` (what its forward uses), else the config's."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    attn = getattr(layers[0], "self_attn", None) if layers is not None and len(layers) else None
    value = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    return int(value or int(config.hidden_size) // int(config.num_attention_heads))


def layer_shapes(state: Mapping[str, Tensor], n_layer: int, hidden: int, head_dim: int) -> list[LayerShape]:
    """Every block's widths read from its q/k/v/o and gate/up/down weights (never from the config), checked
    for consistency (k and v alike, o reads what q writes, whole heads, whole GQA groups)."""
    out = []
    for i in range(n_layer):
        pre = f"model.layers.{i}."
        parts = {}
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            key = f"{pre}{part}.weight"
            if key not in state:
                raise ValueError(f"{key} is missing: not a Llama-layout model")
            if state[key].dim() != 2:
                raise ValueError(f"{key} has shape {tuple(state[key].shape)}; a 2-D weight was expected")
            parts[part] = tuple(int(x) for x in state[key].shape)
        q, k, v, o = (parts[f"self_attn.{n}_proj"] for n in "qkvo")
        gate, up, down = parts["mlp.gate_proj"], parts["mlp.up_proj"], parts["mlp.down_proj"]
        ins = {"q_proj": q[1], "k_proj": k[1], "v_proj": v[1], "gate_proj": gate[1], "up_proj": up[1],
               "o_proj": o[0], "down_proj": down[0]}
        bad = {n: w for n, w in ins.items() if w != hidden}
        if bad:
            raise ValueError(f"layer {i}: {', '.join(f'{n} meets the residual stream with {w}' for n, w in bad.items())}"
                             f", but hidden_size is {hidden}: the residual width must be the same in every layer")
        if q[0] % head_dim or k[0] % head_dim or k != v or o[1] != q[0]:
            raise ValueError(f"layer {i}: q {q}, k {k}, v {v}, o {o} are not whole heads of {head_dim} with k and v "
                             "alike and o reading what q writes; not a shape llama.cpp can load")
        heads, kv = q[0] // head_dim, k[0] // head_dim
        if kv == 0 or heads == 0 or heads % kv:
            raise ValueError(f"layer {i}: {heads} query heads over {kv} KV heads is not whole GQA groups")
        if gate != up or down[1] != gate[0]:
            raise ValueError(f"layer {i}: gate {gate}, up {up}, down {down} disagree on the feed-forward length")
        out.append(LayerShape(heads, kv, gate[0]))
    return out


def check_llama(config: Any) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"GGUF's llama architecture computes SiLU MLPs; this model uses {config.hidden_act!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ValueError(f"config.{flag} is True: GGUF's llama metadata has no key for biases, so "
                             "transformers would drop them when reading the file back")


def gemma3_hparams(config: Any) -> dict[str, Any]:
    """Gemma 3's own metadata (sliding window and its per-layer pattern, the local rotary base), checked
    against what llama.cpp's gemma3 graph computes."""
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"llama.cpp's gemma3 graph computes tanh-GELU MLPs; this model uses {act!r}")
    if getattr(config, "attention_bias", False):
        raise ValueError("config.attention_bias is True: GGUF's gemma3 metadata has no key for biases")
    if getattr(config, "attn_logit_softcapping", None):
        raise ValueError("config.attn_logit_softcapping is set: llama.cpp's gemma3 graph does not cap attention logits")
    head_dim = int(config.head_dim)
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != head_dim:
        raise ValueError(f"query_pre_attn_scalar {scalar} differs from head_dim {head_dim}: llama.cpp's gemma3 graph "
                         "scales attention by 1/sqrt(head_dim), so the file would compute another model")
    params = dict(getattr(config, "rope_parameters", None) or {})
    full = params.get("full_attention", params)
    local = params.get("sliding_attention", {})
    for kind, p in (("full_attention", full), ("sliding_attention", local)):
        if (p or {}).get("rope_type", "default") != "default":
            raise ValueError(f"rotary scaling {p.get('rope_type')!r} on {kind} layers is not written by this exporter "
                             "for gemma3 (default is)")
    theta = float(full.get("rope_theta", getattr(config, "rope_theta", 1_000_000.0)))
    theta_local = float(local.get("rope_theta", getattr(config, "rope_local_base_freq", 10000.0)))
    out: dict[str, Any] = {"rope_freq_base": theta}
    types = list(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if window and "sliding_attention" in types:
        if len(types) != int(config.num_hidden_layers):
            raise ValueError(f"config.layer_types has {len(types)} entries for {config.num_hidden_layers} layers")
        out.update(sliding_window=int(window), sliding_window_pattern=[t == "sliding_attention" for t in types],
                   rope_freq_base_swa=theta_local)
    if getattr(config, "final_logit_softcapping", None):
        out["final_logit_softcapping"] = float(config.final_logit_softcapping)
    return out
