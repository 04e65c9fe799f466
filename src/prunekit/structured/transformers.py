"""Hugging Face transformers: remove attention heads and MLP neurons, and update the config.

Heads are removed by whole key/value groups under grouped-query attention (a key/value head and
the query heads that read it go together), so the query-per-kv ratio is unchanged. The same number
of heads (neurons) is kept in every layer, chosen per layer by importance, so the model's config
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``) describes
the smaller model and ``save_pretrained`` + ``from_pretrained`` reload it. Head pruning follows
Michel et al., 2019 ("Are Sixteen Heads Really Better than One?"); neuron pruning the width
pruning of LLM-Pruner (Ma et al., 2023) and Minitron (Muralidharan et al., 2024).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .removal import _slice_param

HEAD_IMPORTANCES = ("l1", "l2", "random", "activation")


@dataclass
class AttentionParts:
    """One attention layer: its holder module, q/k/v/o projections and head layout."""

    name: str
    holder: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    head_dim: int

    @property
    def heads(self) -> int:
        return self.q.out_features // self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.k.out_features // self.head_dim


@dataclass
class MLPParts:
    """One MLP: the projections into the intermediate width (gate and up, or one) and the one out of it."""

    name: str
    ins: list[nn.Linear]
    out: nn.Linear


def attention_layers(model: nn.Module) -> list[AttentionParts]:
    """The attention layers of a Llama-, ViT- or BERT-style model (q_proj/k_proj/v_proj/o_proj, or
    BERT's query/key/value with ``output.dense``)."""
    mods = dict(model.named_modules())
    found = []
    for name, m in mods.items():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
            q, k, v, o = m.q_proj, m.k_proj, m.v_proj, m.o_proj
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")):
            parent = mods.get(name.rpartition(".")[0])
            out = getattr(getattr(parent, "output", None), "dense", None)
            if not isinstance(out, nn.Linear):
                continue
            q, k, v, o = m.query, m.key, m.value, out
        else:
            continue
        head_dim = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
        if not isinstance(head_dim, int):
            raise ValueError(f"attention module {name!r} has no head_dim or attention_head_size attribute")
        found.append(AttentionParts(name, m, q, k, v, o, head_dim))
    return found


def mlp_layers(model: nn.Module) -> list[MLPParts]:
    """The MLPs of a Llama- (gate/up/down), ViT- (fc1/fc2) or BERT-style (intermediate/output) model."""
    found = []
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")):
            found.append(MLPParts(name, [m.gate_proj, m.up_proj], m.down_proj))
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("fc1", "fc2")):
            found.append(MLPParts(name, [m.fc1], m.fc2))
        elif isinstance(getattr(getattr(m, "intermediate", None), "dense", None), nn.Linear) and \
                isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear):
            found.append(MLPParts(name, [m.intermediate.dense], m.output.dense))
    return found


def _norm(t: Tensor, importance: str) -> Tensor:
    t = t.detach().double()
    return t.abs().sum(1) if importance == "l1" else t.square().sum(1)


def _check_ratio(ratio: float, importance: str, calibration: Any) -> None:
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if importance not in HEAD_IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(HEAD_IMPORTANCES)}, got {importance!r}")
    if importance == "activation" and calibration is None:
        raise ValueError("importance='activation' measures activations: pass calibration= (token ids or inputs)")


@torch.no_grad()
def input_norms(model: nn.Module, linears: list[nn.Linear], calibration: Any) -> list[Tensor]:
    """Mean squared value of each input feature of each Linear in ``linears`` over the calibration tokens."""
    from ..core.calling import call_model
    from .layers import _batches

    sums = [torch.zeros(lin.in_features, dtype=torch.float64) for lin in linears]
    counts = [0] * len(linears)

    def hook(i: int):
        def fn(mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[i] += x.square().sum(0)
            counts[i] += x.shape[0]
        return fn

    handles = [lin.register_forward_pre_hook(hook(i)) for i, lin in enumerate(linears)]
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(calibration):
            call_model(model, batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [s / max(c, 1) for s, c in zip(sums, counts)]


def head_scores(part: AttentionParts, importance: str = "l2", seed: int = 0, act: Tensor | None = None) -> Tensor:
    """One score per key/value group: the weights of its k/v heads, its query heads and their o columns;
    with ``importance="activation"``, what the group writes: Σ over its o_proj inputs of E[x²]·‖o column‖²
    (``act`` holds E[x²] per o_proj input, as FLAP / Minitron's activation importance)."""
    d, kv = part.head_dim, part.kv_heads
    rep = part.heads // kv
    if importance == "activation":
        return (act * _norm(part.o.weight.t(), "l2")).view(kv, rep * d).sum(1)
    if importance == "random":
        return torch.rand(kv, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = _norm(part.q.weight, importance).view(kv, rep * d).sum(1)
    k = _norm(part.k.weight, importance).view(kv, d).sum(1)
    v = _norm(part.v.weight, importance).view(kv, d).sum(1)
    o = _norm(part.o.weight.t(), importance).view(kv, rep * d).sum(1)
    return q + k + v + o


def _heads_to_keep(part: AttentionParts, keep_groups: Tensor) -> tuple[Tensor, Tensor]:
    d, rep = part.head_dim, part.heads // part.kv_heads
    kv_rows = (keep_groups[:, None] * d + torch.arange(d)).flatten()
    q_heads = (keep_groups[:, None] * rep + torch.arange(rep)).flatten()
    q_rows = (q_heads[:, None] * d + torch.arange(d)).flatten()
    return q_rows, kv_rows


def _keep_count(n: int, ratio: float) -> int:
    """How many of ``n`` units stay when ``ratio`` of them go (at least one)."""
    return max(1, n - math.floor(n * ratio + 1e-9))


def _top(scores: Tensor, keep: int) -> Tensor:
    """Indices of the ``keep`` highest scores, in ascending order (ties to the lower index)."""
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:keep]).values


def prune_heads_(model: nn.Module, ratio: float = 0.25, importance: str = "l2", seed: int = 0,
                 calibration: Any = None) -> dict[str, int]:
    """Remove ``ratio`` of the attention heads of every layer (whole key/value groups under GQA), the
    lowest-scoring per layer; the same count in every layer, and the config updated. Returns the new
    head counts. ``importance``: ``l1``/``l2`` (weights), ``random``, or ``activation`` (needs
    ``calibration``; recommended for pretrained LLMs). Michel et al., 2019."""
    _check_ratio(ratio, importance, calibration)
    parts = attention_layers(model)
    if not parts:
        raise ValueError(f"found no attention layers (q_proj/k_proj/v_proj/o_proj or query/key/value) in "
                         f"{type(model).__name__}; prune_heads_ supports Llama-, BERT- and ViT-style models")
    counts = {(p.heads, p.kv_heads) for p in parts}
    if len(counts) != 1:
        raise ValueError(f"layers have different head counts {sorted(counts)}; prune_heads_ needs uniform layers")
    heads, kv = counts.pop()
    keep = _keep_count(kv, ratio)
    rep = heads // kv
    acts = input_norms(model, [p.o for p in parts], calibration) if importance == "activation" and keep != kv \
        else [None] * len(parts)
    for i, part in enumerate(parts):
        if keep == kv:
            break
        scores = head_scores(part, importance, seed + i, acts[i])
        kept = _top(scores, keep)
        q_rows, kv_rows = _heads_to_keep(part, kept)
        for lin, rows in ((part.q, q_rows), (part.k, kv_rows), (part.v, kv_rows)):
            _slice_param(lin, "weight", rows, 0)
            _slice_param(lin, "bias", rows, 0)
            lin.out_features = len(rows)
        _slice_param(part.o, "weight", q_rows, 1)
        part.o.in_features = len(q_rows)
        h = part.holder
        if hasattr(h, "num_attention_heads"):
            h.num_attention_heads = keep * rep
        if hasattr(h, "all_head_size"):
            h.all_head_size = keep * rep * part.head_dim
        if hasattr(h, "num_key_value_heads"):
            h.num_key_value_heads = keep
    config = getattr(model, "config", None)
    if keep != kv and not hasattr(parts[0].holder, "head_dim"):
        warnings.warn(f"{type(model).__name__} derives its head size from hidden_size / num_attention_heads, so "
                      "from_pretrained cannot rebuild the pruned heads from the config; save it with torch.save "
                      "(neuron and block pruning do reload)", stacklevel=2)
    if config is not None and keep != kv:
        config.head_dim = parts[0].head_dim
        config.num_attention_heads = keep * rep
        if getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = keep
    return {"num_attention_heads": keep * rep, "num_key_value_heads": keep}


def neuron_scores(part: MLPParts, importance: str = "l2", seed: int = 0, act: Tensor | None = None) -> Tensor:
    """One score per intermediate neuron: its rows in gate/up (or fc1) and its column in down (fc2); with
    ``importance="activation"``, E[x²]·‖down column‖² of what it writes (``act`` = E[x²] per down input)."""
    n = part.out.in_features
    if importance == "activation":
        return act * _norm(part.out.weight.t(), "l2")
    if importance == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = _norm(part.out.weight.t(), importance)
    for lin in part.ins:
        s = s + _norm(lin.weight, importance)
    return s


def prune_neurons_(model: nn.Module, ratio: float = 0.25, importance: str = "l2", seed: int = 0,
                   calibration: Any = None) -> int:
    """Remove ``ratio`` of the MLP intermediate neurons of every layer (gate, up and down together), the
    lowest-scoring per layer, the same count in every layer; updates ``config.intermediate_size``.
    Returns the new intermediate size. ``importance`` as in :func:`prune_heads_` (``activation`` needs
    ``calibration``). LLM-Pruner (Ma et al., 2023) / Minitron (Muralidharan et al., 2024) width pruning."""
    _check_ratio(ratio, importance, calibration)
    parts = mlp_layers(model)
    if not parts:
        raise ValueError(f"found no MLP (gate/up/down_proj, fc1/fc2 or intermediate/output) in {type(model).__name__}")
    sizes = {p.out.in_features for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"MLPs have different widths {sorted(sizes)}; prune_neurons_ needs uniform layers")
    n = sizes.pop()
    keep = _keep_count(n, ratio)
    acts = input_norms(model, [p.out for p in parts], calibration) if importance == "activation" and keep != n \
        else [None] * len(parts)
    for i, part in enumerate(parts):
        if keep == n:
            break
        scores = neuron_scores(part, importance, seed + i, acts[i])
        kept = _top(scores, keep)
        for lin in part.ins:
            _slice_param(lin, "weight", kept, 0)
            _slice_param(lin, "bias", kept, 0)
            lin.out_features = keep
        _slice_param(part.out, "weight", kept, 1)
        part.out.in_features = keep
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "intermediate_size"):
        config.intermediate_size = keep
    return keep
