"""The Hugging Face config kept true after channel pruning, so ``from_pretrained`` reloads the result: widths
written into the config fields that give them, module numbers derived from the config synced, and what
the config adds to a channel plan (:class:`HFFormat`)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph.depgraph import DependencyGraph
from ..graph.groups import Group

FFN_FIELDS = ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner", "d_ff", "dim_feedforward",
              "hidden_dim", "mlp_dim")


def is_hf(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (it has a ``PretrainedConfig``)."""
    try:
        from transformers import PretrainedConfig
    except Exception:  # pragma: no cover - transformers is optional
        return False
    return isinstance(getattr(model, "config", None), PretrainedConfig)


def _text(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def input_embedding_prefix(model: nn.Module) -> str | None:
    """The qualified name of the module ``get_input_embeddings()`` returns (token or patch embeddings)."""
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    for name, mod in model.named_modules():
        if mod is emb:
            return name
    return None


def mismatches(model: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(tensor, shape the config builds, shape the model has) for every tensor that differs, built on
    the meta device: empty when ``save_pretrained`` + ``from_pretrained`` will reload the model."""
    config = copy.deepcopy(model.config)
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception as exc:
        return [(f"(the config no longer builds a model: {type(exc).__name__}: {exc})", (), ())]
    ref = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return [(k, ref[k], tuple(v.shape)) for k, v in model.state_dict().items() if k in ref and tuple(v.shape) != ref[k]]


def rebuild_mismatches(model: nn.Module) -> list[str]:
    """Names of the tensors whose shapes the config does not describe."""
    return [k for k, _, _ in mismatches(model)]


def update_config_(model: nn.Module, *_: Any) -> dict[str, Any]:
    """Write the pruned widths into ``model.config``: each integer field (or entry of a list field, such
    as ConvNeXt's ``hidden_sizes``) equal to a width a tensor lost — ``hidden_size``,
    ``intermediate_size``, ``n_inner``, ``ffn_dim``, … — and ratio fields such as ``mlp_ratio`` are set
    to the new width when that makes the config describe more of the model (checked by building it on
    the meta device). ``head_dim`` is written out when the hidden width changes, so an attention that
    reads it keeps its own width. Returns the fields changed."""
    text = _text(model.config)
    changes: dict[str, Any] = {}
    wrong = mismatches(model)
    for _ in range(8):
        if not wrong or wrong[0][1] == ():
            break
        pairs = []
        for _, exp, got in wrong:
            pairs += [(e, g) for e, g in zip(exp, got) if e != g]
        best = None
        for old, new in dict.fromkeys(pairs):
            for edit in _edits(text, old, new):
                undo = _apply(text, edit)
                after = mismatches(model)
                _apply(text, undo)
                if (after and after[0][1] == ()) or len(after) >= len(wrong):
                    continue
                if best is None or (len(after), len(edit)) < (len(best[1]), len(best[0])):
                    best = (edit, after)
        if best is None:
            break
        edit, wrong = best
        _apply(text, edit)
        changes.update(edit)
    return {k: getattr(text, k) for k in changes}


def _edits(text: Any, old: int, new: int) -> list[dict[str, Any]]:
    """Config changes that could turn width ``old`` into ``new`` (each a dict of fields to set)."""
    skip = ("vocab_size", "num_labels", "max_position_embeddings", "num_attention_heads", "num_key_value_heads")
    out: list[dict[str, Any]] = []
    hidden = getattr(text, "hidden_size", None)
    heads = getattr(text, "num_attention_heads", None)
    for k, v in vars(text).items():
        if k.startswith("_") or k in skip:
            continue
        if type(v) is int and v == old:
            out.append({k: new})
            if k == "hidden_size" and isinstance(heads, int) and heads and getattr(text, "head_dim", None) is None:
                out.append({k: new, "head_dim": old // heads})  # an attention that reads head_dim keeps it
        elif isinstance(v, (list, tuple)) and all(type(x) is int for x in v) and old in v:
            for i, x in enumerate(v):
                if x == old:
                    seq = list(v)
                    seq[i] = new
                    out.append({k: type(v)(seq)})
        elif v is None and k in FFN_FIELDS and hidden and 4 * hidden == old:
            out.append({k: new})
        elif type(v) is float and v > 1 and hidden and abs(v * hidden - old) < 0.5 and "ratio" in k:
            out.append({k: new / hidden})
    return out


_ABSENT = object()


def _apply(text: Any, edit: dict[str, Any]) -> dict[str, Any]:
    """Set the fields of ``edit`` (removing those set to ``_ABSENT``); returns the edit that undoes it."""
    undo = {k: (getattr(text, k) if k in vars(text) else _ABSENT) for k in edit}
    for k, v in edit.items():
        if v is _ABSENT:
            if k in vars(text):
                delattr(text, k)
        else:
            setattr(text, k, v)
    return undo


def sync_from_config_(model: nn.Module) -> list[str]:
    """Make the pruned model compute what ``from_pretrained`` of its saved folder will compute: module
    numbers derived from the config at construction (attention ``scaling = head_dim ** -0.5``, Gemma's
    ``embed_scale = hidden_size ** 0.5``) and non-persistent buffers are taken from a model built from
    the updated config. Returns the names of what changed."""
    try:
        from accelerate import init_empty_weights
    except Exception:  # pragma: no cover - accelerate is a dependency of the hf extra
        return []
    try:
        with init_empty_weights(include_buffers=False):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception:
        return []
    mods = dict(model.named_modules())
    changed = []
    for name, fm in fresh.named_modules():
        mod = mods.get(name)
        if mod is None or type(mod) is not type(fm):
            continue
        for k, v in vars(fm).items():
            if k.startswith("_") or type(v) not in (int, float):
                continue
            cur = getattr(mod, k, None)
            if type(cur) is type(v) and cur != v:
                setattr(mod, k, v)
                changed.append(f"{name}.{k}" if name else k)
        for b in getattr(fm, "_non_persistent_buffers_set", ()):
            fb, cur = fm._buffers.get(b), mod._buffers.get(b)
            if isinstance(fb, torch.Tensor) and isinstance(cur, torch.Tensor) and fb.device.type != "meta" \
                    and fb.shape == cur.shape and not torch.equal(fb.to(cur.dtype), cur):
                mod._buffers[b] = fb.to(device=cur.device, dtype=cur.dtype)
                changed.append(f"{name}.{b}" if name else b)
    return changed


class HFFormat:
    """What a Hugging Face config adds to a channel plan (:class:`prunekit.structured.graph.plan.ModelFormat`):
    the config is rewritten on every trial copy and must build the pruned shapes, the hidden width stays a
    multiple of the head count (configs check ``hidden_size % num_attention_heads``), and families that
    derive ``head_dim = hidden_size / num_attention_heads`` get their attention widths tied to the hidden
    width the first time the config cannot describe an attention tensor."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.embed_prefix = input_embedding_prefix(model)
        heads = getattr(_text(model.config), "num_attention_heads", None)
        if isinstance(heads, (list, tuple)) and heads and all(isinstance(h, int) and h > 0 for h in heads):
            heads = math.lcm(*heads)  # a head count per stage (Swin): the widths stay divisible by every one
        self.heads = heads if isinstance(heads, int) and heads > 0 else None
        self.heads_tied = False

    def multiple(self, group: Group) -> int:
        if self.heads and self.embed_prefix is not None and any(
                m.tensor.startswith(self.embed_prefix + ".") for m in group.members):
            return self.heads
        return 1

    def update_(self, model: nn.Module) -> dict[str, Any]:
        return update_config_(model)

    def mismatches(self, model: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        return mismatches(model)

    def tie(self, graph: DependencyGraph, wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> bool:
        if self.heads_tied or not any(".attn" in n or "attention" in n for n, _, _ in wrong):
            return False
        self.heads_tied = True  # the family derives head_dim from the hidden width
        return tie_derived_heads(self.model, graph, self.embed_prefix)


def tie_derived_heads(model: nn.Module, graph: DependencyGraph, embed_prefix: str | None) -> bool:
    """Families whose attention derives ``head_dim = hidden_size / num_attention_heads`` (BERT, GPT-2,
    OPT, ViT, …) can only reload if the attention widths shrink with the hidden width: the hidden
    channels h·d + j of every head-sized chunk and position j of every head in the attention
    projections are united, so both keep ``heads × d'`` channels. True when something was tied."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, hidden = getattr(text, "num_attention_heads", None), getattr(text, "hidden_size", None)
    if not isinstance(heads, int) or not isinstance(hidden, int) or not heads or hidden % heads or embed_prefix is None:
        return False
    d = hidden // heads
    embed = [m for m in graph.members.values() if m.tensor.startswith(embed_prefix + ".") and len(m.labels) == hidden]
    if not embed:
        return False
    tied = False
    residual = embed[0].labels.reshape(heads, d)
    graph.unite_along(residual, 1)
    attn = [name for name, mod in model.named_modules() if type(mod).__name__.endswith("Attention")]
    for (tensor, dim), m in list(graph.members.items()):
        if m.role != "out" or not any(tensor.startswith(a + ".") for a in attn) or len(m.labels) % d:
            continue
        if np.array_equal(graph.roots(m.labels[:d]), graph.roots(residual[0])):
            continue  # already the hidden width (an output projection)
        block = m.labels.reshape(-1, d)
        graph.unite_along(block, 1)
        graph.union(block[0], residual[0])
        tied = True
    return tied
