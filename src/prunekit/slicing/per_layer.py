"""SliceGPT as the paper does it: a rotation per residual connection, with shortcut matrices.

Each block reads its stream in its own principal basis, computed on the already-sliced model's
signals, block after block (TransformerCompression's ``rotate_and_slice_sequential``): the input of
block l in basis Q_l, the stream between its attention and its MLP in basis Q_mid, its output in
Q_{l+1}. The residual connections then need ``d' × d'`` shortcut matrices (Q_midᵀQ_l and
Q_{l+1}ᵀQ_mid), which no stock transformers class has: prunekit adds them to each decoder layer as
``attn_shortcut`` / ``mlp_shortcut`` Linear modules and swaps the layer's forward. Saved folders get a
``model_type`` of ``prunekit-sliced-<family>`` so that stock ``from_pretrained`` refuses them loudly
instead of silently dropping the shortcuts; :func:`load_sliced` reads them. The shortcuts cost
``2 × layers × d'²`` parameters and the head must be untied (it reads the last basis, the embeddings
the first), so on a small model this form can be *larger* than the dense one; :func:`plan_slice`
counts them and refuses growth.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..calibrate.batches import calibration_batches
from ..calibrate.blockwise import capture_inputs, run_block
from .layout import DecoderParts
from .pca import principal_axes

MARK = "prunekit-sliced-"


class _Stop(Exception):
    pass


def _shortcut_forward(self: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """A pre-norm decoder layer whose two residual connections go through d' × d' shortcut matrices."""
    residual = self.attn_shortcut(hidden_states)
    h = self.input_layernorm(hidden_states)
    h, _ = self.self_attn(hidden_states=h, **kwargs)
    h = residual + h
    residual = self.mlp_shortcut(h)
    h = self.mlp(self.post_attention_layernorm(h))
    return residual + h


def add_shortcuts_(layer: nn.Module, width_in: int, width_out: int) -> None:
    """Give a decoder layer its two shortcut matrices (identity-initialised where square) and the forward that uses them."""
    dtype = layer.input_layernorm.weight.dtype
    layer.attn_shortcut = nn.Linear(width_in, width_out, bias=False, dtype=dtype)
    layer.mlp_shortcut = nn.Linear(width_out, width_out, bias=False, dtype=dtype)
    layer.forward = types.MethodType(_shortcut_forward, layer)


def _cov(xs: list[Tensor], signal: str, eps: float) -> Tensor:
    c = None
    for x in xs:
        x = x.reshape(-1, x.shape[-1]).float()
        if signal == "normalized":
            x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
        part = (x.t() @ x).double()
        c = part if c is None else c + part
    return c  # type: ignore[return-value]


def _set(lin: nn.Linear, weight: Tensor, bias: Tensor | None = None) -> None:
    lin.weight = nn.Parameter(weight.to(lin.weight.dtype).contiguous(), requires_grad=lin.weight.requires_grad)
    lin.out_features, lin.in_features = weight.shape
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(lin.bias.dtype).contiguous(), requires_grad=lin.bias.requires_grad)


def rotate_and_slice_per_layer_(model: nn.Module, parts: DecoderParts, calibration: Any, width: int, *,
                                signal: str = "normalized", batch_size: int = 8) -> float:
    """Slice every block with its own PCA bases, computed on the sliced model's signals; returns the mean share
    of the signals' variance kept."""
    import math

    d, d2 = parts.hidden, width
    scale = math.sqrt(d / d2)
    eps = float(getattr(parts.final_norm, "variance_epsilon", getattr(parts.final_norm, "eps", 1e-6)))
    layers = model.model.layers
    kept: list[float] = []

    def basis(xs: list[Tensor]) -> Tensor:
        values, vectors = principal_axes(_cov(xs, signal, eps))
        kept.append(float(values[:d2].sum() / values.sum()))
        return vectors[:, :d2]

    with torch.no_grad():
        states = [c[0] for c in capture_inputs(model, layers, calibration_batches(calibration, batch_size, tokens=True))]
        g_final = parts.final_norm.weight.detach().double()
        head = parts.head.weight.detach().double()
        q = basis([s.hidden for s in states])
        parts.embed.weight = nn.Parameter((parts.embed.weight.detach().double() @ q).to(parts.embed.weight.dtype))
        parts.embed.embedding_dim = d2
        for layer, b in zip(layers, parts.blocks):
            g1, g2 = b.attn_norm.weight.detach().double(), b.mlp_norm.weight.detach().double()
            for lin in b.attn_in:
                _set(lin, (lin.weight.detach().double() * g1) @ q)
            b.attn_norm.weight = nn.Parameter(torch.full((d2,), scale, dtype=b.attn_norm.weight.dtype))
            add_shortcuts_(layer, d2, d)  # first d' → d (the original basis) to read the mid signal
            layer.attn_shortcut.weight.copy_(q.to(layer.attn_shortcut.weight.dtype))
            for s in states:
                s.hidden = (s.hidden.double() @ q).to(s.hidden.dtype)
            mids: list[Tensor] = []

            def grab(module: nn.Module, args: tuple) -> None:
                mids.append(args[0].detach())
                raise _Stop

            handle = b.mlp_norm.register_forward_pre_hook(grab)
            try:
                for s in states:
                    try:
                        run_block(layer, s)
                    except _Stop:
                        pass
            finally:
                handle.remove()
            q_mid = basis(mids)
            _set(b.attn_out, q_mid.t() @ b.attn_out.weight.detach().double(),
                 None if b.attn_out.bias is None else q_mid.t() @ b.attn_out.bias.detach().double())
            _set(layer.attn_shortcut, q_mid.t() @ q)
            for lin in b.mlp_in:
                _set(lin, (lin.weight.detach().double() * g2) @ q_mid)
            b.mlp_norm.weight = nn.Parameter(torch.full((d2,), scale, dtype=b.mlp_norm.weight.dtype))
            layer.mlp_shortcut = nn.Linear(d2, d, bias=False, dtype=layer.attn_shortcut.weight.dtype)
            layer.mlp_shortcut.weight.copy_(q_mid.to(layer.mlp_shortcut.weight.dtype))
            outs = [run_block(layer, s) for s in states]
            q_next = basis(outs)
            _set(b.mlp_out, q_next.t() @ b.mlp_out.weight.detach().double(),
                 None if b.mlp_out.bias is None else q_next.t() @ b.mlp_out.bias.detach().double())
            _set(layer.mlp_shortcut, q_next.t() @ q_mid)
            for s, o in zip(states, outs):
                s.hidden = o
            q = q_next
        parts.head.weight = nn.Parameter(((head * g_final) @ q).to(parts.head.weight.dtype))
        parts.head.in_features = d2
        parts.final_norm.weight = nn.Parameter(torch.full((d2,), scale, dtype=parts.final_norm.weight.dtype))
    return sum(kept) / len(kept)


def mark_config_(model: nn.Module) -> None:
    """Record in the config that the layers carry shortcuts, so that stock loaders refuse the folder."""
    model.config.prunekit_slicing = {"rotation": "per_layer", "family": model.config.model_type}


def save_sliced(model: nn.Module, folder: str | Path, **kwargs: Any) -> None:
    """``save_pretrained``, then mark ``config.json`` so only :func:`load_sliced` reads it (stock classes would drop
    the shortcuts silently)."""
    model.save_pretrained(str(folder), **kwargs)
    mark_sliced(folder)


def mark_sliced(folder: str | Path) -> None:
    """Mark a saved folder's ``config.json`` when it holds per-layer slicing shortcuts (else leave it)."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    if "prunekit_slicing" in data:
        data["model_type"] = MARK + data["prunekit_slicing"]["family"]
        path.write_text(json.dumps(data, indent=2) + "\n")


def load_sliced(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a folder written by :func:`save_sliced` (per-layer rotations, with shortcut matrices)."""
    from safetensors.torch import load_file
    import transformers as tf

    from ..infra.shards import check_model_folder, safetensors_files

    folder = Path(folder)
    check_model_folder(folder)  # no shard or index entry that leads out of the folder
    data = json.loads((folder / "config.json").read_text())
    if not str(data.get("model_type", "")).startswith(MARK):
        return tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    data["model_type"] = data["prunekit_slicing"]["family"]
    config = tf.AutoConfig.for_model(**data)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    d2 = config.hidden_size
    for layer in model.model.layers:
        add_shortcuts_(layer, d2, d2)
    state: dict[str, Tensor] = {}
    for f in safetensors_files(folder):  # each checked to stay inside the folder
        state.update(load_file(str(folder / f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not match the sliced model (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return model.eval()
