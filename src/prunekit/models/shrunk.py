"""Reading a decoder whose blocks have their own sizes (``prunekit.shrink``'s per-layer shapes): config.json keeps
the family's plain fields and records every block's ``num_key_value_heads``, ``num_attention_heads`` and
``intermediate_size`` under ``prunekit_layer_shapes``. Stock ``from_pretrained`` refuses such a folder (the
weights' sizes mismatch); :func:`load_shrunk` builds the stock model class from the config, resizes each block's
projections and loads the weights strictly. No remote code runs. :func:`prunekit.models.hf.load_model` reads such
folders with it, so ``prunekit eval / prune / export`` take them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CONFIG_KEY = "prunekit_layer_shapes"


@dataclass(frozen=True)
class LayerShapes:
    """Every block's key/value groups and MLP neurons (query heads = groups × query heads per group)."""

    kv_heads: tuple[int, ...]
    ffn: tuple[int, ...]
    queries_per_group: int
    head_dim: int

    @property
    def heads(self) -> tuple[int, ...]:
        """Query heads of every block."""
        return tuple(k * self.queries_per_group for k in self.kv_heads)

    @property
    def uniform(self) -> bool:
        """Whether every block has the same sizes."""
        return len(set(self.kv_heads)) == 1 and len(set(self.ffn)) == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in config.json under ``prunekit_layer_shapes``."""
        return {"num_key_value_heads": list(self.kv_heads), "num_attention_heads": list(self.heads),
                "intermediate_size": list(self.ffn), "head_dim": self.head_dim}

    def __str__(self) -> str:
        def span(xs: tuple[int, ...]) -> str:
            return f"{xs[0]}" if len(set(xs)) == 1 else f"{min(xs)}–{max(xs)} ({', '.join(map(str, xs))})"
        return f"per block: MLP {span(self.ffn)}; kv groups {span(self.kv_heads)}"


def stored_layer_shapes(config: Any) -> LayerShapes | None:
    """The per-block shapes a config records (None: the config's plain fields hold for every block)."""
    data = getattr(config, CONFIG_KEY, None)
    if data is None:
        return None
    try:
        kv, heads, ffn, d = (data["num_key_value_heads"], data["num_attention_heads"], data["intermediate_size"],
                             int(data["head_dim"]))
        n = int(config.num_hidden_layers)
        if not (len(kv) == len(heads) == len(ffn) == n) or any(h % k for h, k in zip(heads, kv)):
            raise ValueError
        reps = {h // k for h, k in zip(heads, kv)}
        if len(reps) != 1:
            raise ValueError
        return LayerShapes(tuple(int(k) for k in kv), tuple(int(f) for f in ffn), reps.pop(), d)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"config.json's {CONFIG_KEY} is malformed (it needs num_key_value_heads, num_attention_heads "
                         f"and intermediate_size lists of one entry per block, the same query heads per group, and "
                         f"head_dim); got {data!r}") from None


def _resize_(model: nn.Module, shapes: LayerShapes) -> None:
    d, rep = shapes.head_dim, shapes.queries_per_group
    for i, b in enumerate(_blocks(model)):
        a, m = b.self_attn, b.mlp

        def fresh(lin: nn.Linear, out_f: int, in_f: int) -> nn.Linear:
            return nn.Linear(in_f, out_f, bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype)

        H = a.q_proj.in_features
        q, kv, f = shapes.kv_heads[i] * rep * d, shapes.kv_heads[i] * d, shapes.ffn[i]
        a.q_proj, a.k_proj, a.v_proj = fresh(a.q_proj, q, H), fresh(a.k_proj, kv, H), fresh(a.v_proj, kv, H)
        a.o_proj = fresh(a.o_proj, H, q)
        m.gate_proj, m.up_proj, m.down_proj = fresh(m.gate_proj, f, H), fresh(m.up_proj, f, H), fresh(m.down_proj, H, f)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = f


def load_shrunk(path: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """A shrunk model folder read back: stock ``from_pretrained`` when its blocks are uniform; with per-block
    shapes (``prunekit_layer_shapes`` in config.json), the stock model class built from the config, every
    block's modules resized, and the weights loaded strictly (every tensor present, every shape equal).
    No remote code runs. ``dtype`` defaults to the one the folder was saved in."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..infra.shards import check_model_folder, safetensors_files

    folder = Path(path)
    check_model_folder(folder)
    config = AutoConfig.from_pretrained(str(folder))
    if dtype is None:
        dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    shapes = stored_layer_shapes(config)
    if shapes is None:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    files = safetensors_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights; a per-layer shrunk folder is saved with them")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _resize_(model, shapes)
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ValueError(f"{folder}'s weights do not match its {CONFIG_KEY} ({what}); the folder is damaged")
    model.tie_weights()
    return model.eval()


def _blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.model.layers)
