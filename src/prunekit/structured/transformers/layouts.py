"""Where the heads and the MLP neurons of a Hugging Face transformer live.

Attention: every output row of the projections that make queries, keys and values is labelled with
its kind (q, k or v) and its head — for separate ``q_proj``/``k_proj``/``v_proj`` (Llama, Mistral,
Qwen, Gemma, OPT's with ``out_proj``, BERT's ``query``/``key``/``value``, DistilBERT's ``q_lin``),
fused ``[Q | K | V]`` rows (Phi-3's ``qkv_proj``, GPT-2's ``c_attn``, Falcon-7B's multi-query
``query_key_value``), per-head interleaved ``(heads, 3, head_dim)`` rows (GPT-NeoX, Falcon-RW) and
Falcon-40B's grouped ``(kv_heads, q_per_kv + 2, head_dim)`` rows. Removing a head is then keeping
the rows whose label survives, in their order, whatever the layout.

MLPs: the projections into the intermediate width (gate and up, fused ``gate_up_proj``, or one) and
the one out of it, plus the 3-D fused experts of MoE blocks, each with the config field its width is
read from (``intermediate_size``, OPT's ``ffn_dim``, GPT-2's ``n_inner``, Falcon's
``ffn_hidden_size``, MoE's ``moe_intermediate_size`` and ``shared_expert_intermediate_size``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...calibrate.moe import FusedExperts, as_fused_experts
from ...core.scope import is_transposed

Q, K, V = 0, 1, 2


def out_features(m: nn.Module) -> int:
    """Output width of a Linear-like module (nn.Linear, or transformers' transposed ``Conv1D``)."""
    return m.weight.shape[1] if is_transposed(m) else m.weight.shape[0]


def in_features(m: nn.Module) -> int:
    """Input width of a Linear-like module."""
    return m.weight.shape[0] if is_transposed(m) else m.weight.shape[1]


def _linear(m: Any) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Module) and is_transposed(m))


@dataclass
class Projection:
    """A module whose output rows carry queries, keys and/or values: each row's kind and head."""

    module: nn.Module
    kind: Tensor  # (rows,) Q, K or V
    head: Tensor  # (rows,) the query head (for Q rows) or the key/value head (K, V rows)


@dataclass
class AttentionParts:
    """One attention layer: its holder module, projections (labelled rows), output projection and head layout."""

    name: str
    holder: nn.Module
    projections: list[Projection]
    out: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    layout: str
    norms: list[tuple[nn.Module, int]] = field(default_factory=list)  # per-row q/k norms (OLMo2) and their kind

    @property
    def rep(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    def row_groups(self, p: Projection) -> Tensor:
        """The key/value group of each output row of ``p``."""
        return torch.where(p.kind == Q, p.head // self.rep, p.head)

    def out_heads(self) -> Tensor:
        """The query head of each input column of the output projection."""
        return torch.arange(self.heads * self.head_dim) // self.head_dim


def _labels(kind: int, heads: int, d: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    n = heads * d
    return torch.full((n,), kind, dtype=torch.long), torch.arange(n) // d + offset


def _qkv_concat(heads: int, kv: int, d: int) -> tuple[Tensor, Tensor]:
    parts = [_labels(Q, heads, d), _labels(K, kv, d), _labels(V, kv, d)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _qkv_interleaved(heads: int, d: int) -> tuple[Tensor, Tensor]:
    """(heads, 3, d) rows: every head's q, k and v rows side by side (GPT-NeoX, Falcon-RW)."""
    r = torch.arange(heads * 3 * d)
    return (r % (3 * d)) // d, r // (3 * d)


def _qkv_grouped(heads: int, kv: int, d: int) -> tuple[Tensor, Tensor]:
    """(kv, rep + 2, d) rows: each group's query heads, then its key and its value (Falcon-40B/180B)."""
    rep = heads // kv
    r = torch.arange(kv * (rep + 2) * d)
    group, slot = r // ((rep + 2) * d), (r % ((rep + 2) * d)) // d
    kind = torch.where(slot < rep, Q, torch.where(slot == rep, K, V))
    head = torch.where(slot < rep, group * rep + slot.clamp(max=rep - 1), group)
    return kind, head


_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))
_OUTPUT = ("o_proj", "out_proj", "dense", "out_lin", "c_proj")


def _head_dim(m: nn.Module, q_rows: int) -> int | None:
    for attr in ("head_dim", "attention_head_size", "head_size"):
        d = getattr(m, attr, None)
        if isinstance(d, int) and d > 0:
            return d
    for attr in ("num_heads", "num_attention_heads", "n_heads"):
        h = getattr(m, attr, None)
        if isinstance(h, int) and h > 0 and q_rows % h == 0:
            return q_rows // h
    return None


def _separate(name: str, m: nn.Module, mods: dict[str, nn.Module]) -> AttentionParts | None:
    for qn, kn, vn in _SEPARATE:
        q, k, v = (getattr(m, a, None) for a in (qn, kn, vn))
        if not all(_linear(x) for x in (q, k, v)):
            continue
        out = next((getattr(m, a) for a in _OUTPUT if _linear(getattr(m, a, None))), None)
        if out is None:  # BERT: the output projection sits in the parent's ``output.dense``
            parent = mods.get(name.rpartition(".")[0])
            out = getattr(getattr(parent, "output", None), "dense", None)
        if not _linear(out):
            return None
        d = _head_dim(m, out_features(q))
        if d is None:
            raise ValueError(f"attention module {name!r} ({type(m).__name__}) has no head_dim, attention_head_size "
                             "or number-of-heads attribute; cannot tell its heads apart")
        heads, kv = out_features(q) // d, out_features(k) // d
        projections = [Projection(q, *_labels(Q, heads, d)), Projection(k, *_labels(K, kv, d)),
                       Projection(v, *_labels(V, kv, d))]
        return AttentionParts(name, m, projections, out, heads, kv, d, "separate")
    return None


def _fused(name: str, m: nn.Module, config: Any) -> AttentionParts | None:
    qkv_name = next((a for a in ("qkv_proj", "c_attn", "query_key_value") if _linear(getattr(m, a, None))), None)
    if qkv_name is None:
        return None
    qkv = getattr(m, qkv_name)
    out = next((getattr(m, a) for a in ("o_proj", "c_proj", "dense") if _linear(getattr(m, a, None))), None)
    if out is None:
        return None
    rows = out_features(qkv)
    if hasattr(m, "new_decoder_architecture"):  # Falcon
        heads, d = m.num_heads, m.head_dim
        if m.new_decoder_architecture:
            kv = m.num_kv_heads
            kind, head = _qkv_grouped(heads, kv, d)
            layout = "falcon-grouped"
        elif m.multi_query:
            kv = 1
            kind, head = _qkv_concat(heads, 1, d)
            layout = "multi-query"
        else:
            kv = heads
            kind, head = _qkv_interleaved(heads, d)
            layout = "interleaved"
    elif qkv_name == "query_key_value":  # GPT-NeoX, BLOOM
        d = next((v for v in (getattr(m, a, None) for a in ("head_size", "head_dim")) if isinstance(v, int) and v > 0),
                 None)
        if d is None or rows % (3 * d):
            raise ValueError(f"attention module {name!r} ({type(m).__name__}) has a fused query_key_value but no "
                             "head_size / head_dim that divides it; cannot tell its heads apart")
        heads = kv = rows // (3 * d)
        kind, head = _qkv_interleaved(heads, d)
        layout = "interleaved"
    else:  # [Q | K | V]: Phi-3's qkv_proj, GPT-2's c_attn
        d = getattr(m, "head_dim", None)
        if not isinstance(d, int):
            raise ValueError(f"attention module {name!r} ({type(m).__name__}) has no head_dim attribute")
        if getattr(m, "is_cross_attention", False):
            return None
        if getattr(m, "multi_query", None) is False:  # GPTBigCode without multi-query: (heads, 3, d) rows
            heads = kv = rows // (3 * d)
            kind, head = _qkv_interleaved(heads, d)
            layout = "interleaved"
        else:  # the key/value head count under its several names (GPTBigCode's multi-query: kv_heads = 1)
            kv = next((v for v in (getattr(m, a, None) for a in ("num_key_value_heads", "kv_heads", "num_kv_heads",
                                                                  "num_heads")) if isinstance(v, int) and v > 0),
                      rows // (3 * d))
            heads = rows // d - 2 * kv
            if heads < kv or heads % kv:
                raise ValueError(f"attention module {name!r} ({type(m).__name__}): its {qkv_name} has {rows} rows, "
                                 f"which do not hold [Q | K | V] for {kv} key/value heads of size {d}")
            kind, head = _qkv_concat(heads, kv, d)
            layout = "fused"
    if len(kind) != rows or heads * d != in_features(out):
        raise ValueError(f"attention module {name!r} ({type(m).__name__}): its {qkv_name} has {rows} rows and its "
                         f"output projection {in_features(out)} inputs, which do not fit {heads} query and {kv} "
                         f"key/value heads of size {d} ({layout} layout)")
    return AttentionParts(name, m, [Projection(qkv, kind, head)], out, heads, kv, d, layout)


_QK_NORMS = (("q_norm", Q), ("k_norm", K), ("q_layernorm", Q), ("k_layernorm", K), ("query_layernorm", Q),
             ("key_layernorm", K))


def _row_norms(part: AttentionParts) -> list[tuple[nn.Module, int]]:
    """Norms of the holder that span all query (key) heads — a weight of heads·head_dim entries (OLMo2's
    ``q_norm``) or of shape (heads, head_dim) (Cohere's): they lose the removed heads' entries. A norm over
    one head_dim (Qwen3, Gemma 3) is shared by every head and stays."""
    found = []
    for attr, kind in _QK_NORMS:
        norm = getattr(part.holder, attr, None)
        w = getattr(norm, "weight", None)
        n = part.heads if kind == Q else part.kv_heads
        if isinstance(w, Tensor) and w.numel() == n * part.head_dim and n > 1 and w.shape[0] in (n, n * part.head_dim):
            found.append((norm, kind))
    return found


def attention_layers(model: nn.Module) -> list[AttentionParts]:
    """Every self-attention layer of a Hugging Face transformer, with its heads located (see the module doc)."""
    mods = dict(model.named_modules())
    config = getattr(model, "config", None)
    found = []
    for name, m in mods.items():
        part = _separate(name, m, mods) or _fused(name, m, config)
        if part is not None:
            part.norms = _row_norms(part)
            found.append(part)
    return found


# ---------------------------------------------------------------------------------------------- MLPs

@dataclass
class MLPParts:
    """One MLP: the projections into its intermediate width, the one out of it, and the config field of the width.

    ``ins`` are (module, gated) pairs: a gated module holds two rows per neuron (Phi-3's fused
    ``gate_up_proj``: gate rows, then up rows)."""

    name: str
    ins: list[tuple[nn.Module, bool]]
    out: nn.Module
    field: str | None
    holder: nn.Module | None = None

    @property
    def width(self) -> int:
        return in_features(self.out)


@dataclass
class ExpertMLPs:
    """The fused 3-D experts of one MoE block, and the config field of their intermediate width."""

    name: str
    fused: FusedExperts
    field: str | None

    @property
    def width(self) -> int:
        return self.fused.intermediate()


_DENSE_FIELDS = ("intermediate_size_mlp", "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "hidden_dim",
                 "dim_feedforward")
_PAIRS = (("fc1", "fc2"), ("c_fc", "c_proj"), ("dense_h_to_4h", "dense_4h_to_h"), ("lin1", "lin2"))


def _width_field(config: Any, name: str, expert: bool, width: int) -> str | None:
    """The config field that gives this MLP's width: among the fields of its kind (a shared expert's, an
    expert's, or a dense MLP's — ``encoder_ffn_dim`` for a module under ``encoder``, Llama 4's
    ``intermediate_size_mlp`` …), the first whose value is the width, else one left unset (GPT-2's
    ``n_inner = None`` means 4 × hidden), else none."""
    if config is None:
        return None
    leaf = name.rpartition(".")[2]
    if leaf.startswith("shared_expert"):
        fields: tuple[str, ...] = ("shared_expert_intermediate_size", "intermediate_size")
    elif expert:
        fields = ("moe_intermediate_size", "intermediate_size")
    else:
        fields = tuple(f"{p}_ffn_dim" for p in name.split(".") if p.isidentifier()) + _DENSE_FIELDS
    present = [f for f in fields if hasattr(config, f) and not isinstance(getattr(type(config), f, None), property)]
    same = next((f for f in present if getattr(config, f) == width), None)
    return same or next((f for f in present if getattr(config, f) is None), None)


def mlp_layers(model: nn.Module) -> list[MLPParts]:
    """The dense MLPs of a Hugging Face transformer: gate/up/down, fused gate_up/down, fc1/fc2, c_fc/c_proj,
    dense_h_to_4h/dense_4h_to_h, BERT's intermediate/output, and per-expert w1/w3/w2 (see :func:`expert_layers`
    for fused MoE experts)."""
    return all_mlps(model)[0]


def expert_layers(model: nn.Module) -> list[ExpertMLPs]:
    """The fused 3-D MoE experts of a Hugging Face transformer, each with the config field of its width."""
    return all_mlps(model)[1]


def all_mlps(model: nn.Module) -> tuple[list[MLPParts], list[ExpertMLPs]]:
    """Both :func:`mlp_layers` and :func:`expert_layers`, in one walk over the modules."""
    config = getattr(model, "config", None)
    dense, experts = [], []
    for name, m in model.named_modules():
        if ".parametrizations." in f".{name}.":
            continue
        fused = as_fused_experts(name, m)
        if fused is not None:
            part_e = ExpertMLPs(name, fused, None)
            part_e.field = _width_field(config, name, True, part_e.width)
            experts.append(part_e)
            continue
        expert = ".experts." in f".{name}."  # per-expert nn.Linear MLPs of older MoE layouts
        if all(_linear(getattr(m, a, None)) for a in ("gate_proj", "up_proj", "down_proj")):
            part = MLPParts(name, [(m.gate_proj, False), (m.up_proj, False)], m.down_proj, None, m)
        elif all(_linear(getattr(m, a, None)) for a in ("w1", "w2", "w3")):
            part = MLPParts(name, [(m.w1, False), (m.w3, False)], m.w2, None, m)
        elif _linear(getattr(m, "gate_up_proj", None)) and _linear(getattr(m, "down_proj", None)):
            part = MLPParts(name, [(m.gate_up_proj, True)], m.down_proj, None, m)
        elif (pair := next((p for p in _PAIRS if all(_linear(getattr(m, a, None)) for a in p)), None)) is not None:
            part = MLPParts(name, [(getattr(m, pair[0]), False)], getattr(m, pair[1]), None, m)
        elif _linear(getattr(getattr(m, "intermediate", None), "dense", None)) and \
                _linear(getattr(getattr(m, "output", None), "dense", None)):
            part = MLPParts(name, [(m.intermediate.dense, False)], m.output.dense, None, m)
        else:
            continue
        part.field = _width_field(config, name, expert, part.width)
        dense.append(part)
    return dense, experts


def groups_by_field(parts: list[Any]) -> dict[str | None, list[Any]]:
    """MLPs (or expert sets) grouped by the config field their width comes from, in model order."""
    out: dict[str | None, list[Any]] = {}
    for p in parts:
        out.setdefault(p.field, []).append(p)
    return out

