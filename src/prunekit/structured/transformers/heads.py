"""Attention heads of Hugging Face transformers: score, choose and remove them, and update the config.

Heads go by whole key/value groups under grouped-query attention (a key/value head and the query heads
that read it go together), so the query-per-kv ratio is unchanged; a model with a single key/value
head (multi-query attention: Falcon-7B, Gemma 3 270M) loses query heads instead. Every layer keeps the
same number of heads, chosen per layer by importance, so the config describes the smaller model;
``head_dim`` is written to the config explicitly, the head count is moved to the nearest one the
config class accepts when it checks ``hidden_size % num_attention_heads`` (Llama, Gemma 2/3), and the
report says whether ``from_pretrained`` rebuilds the saved model. Michel et al., 2019 ("Are Sixteen
Heads Really Better than One?").
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ...calibrate.stats import collect_input_stats
from ...core.deprecation import renamed_args
from ...core.fraction import keep_count
from ..graph.removal import _slice_param
from ..graph.report import StructuredPruningWarning, count_params
from .common import (
    check_common, config_accepts, finalize_masks_, guard_masks, keep_cols_, keep_rows_, matrix,
    reload_problem_after, row_norms, top,
)
from .layouts import Q, AttentionParts, attention_layers

HEAD_UNITS = ("auto", "group", "query")


@dataclass
class HeadPruneReport:
    """What :func:`prune_heads_` did."""

    sparsity: float
    importance: str
    unit: str  # "group" (whole key/value groups) or "query" (query heads within each group)
    layers: int
    heads_before: int
    heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    head_dim: int
    params_before: int
    params_after: int
    reloadable: bool
    notes: list[str] = field(default_factory=list)
    reachable: list[float] = field(default_factory=list)  # the fractions of heads that ``unit`` can remove

    @property
    def removed_fraction(self) -> float:
        """The fraction of the query heads removed."""
        return 1 - self.heads_after / self.heads_before if self.heads_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return {**asdict(self), "removed_fraction": self.removed_fraction}

    def __str__(self) -> str:
        text = (f"heads: {self.heads_before} → {self.heads_after} query, {self.kv_heads_before} → "
                f"{self.kv_heads_after} key/value (head_dim {self.head_dim}) in {self.layers} layers, by "
                f"{self.importance} ({self.unit}); parameters {self.params_before:,} → {self.params_after:,}")
        return "; ".join([text, *self.notes])


def unit_scores(part: AttentionParts, unit: str = "group", importance: str = "l2", seed: int = 0,
                act: Tensor | None = None) -> Tensor:
    """One score per key/value group (``unit="group"``) or per query head (``"query"``): the weights of its
    rows in the q/k/v projections and of its columns in the output projection (``l1``/``l2``); with
    ``activation``, what it writes: Σ over its output-projection inputs of E[x²]·‖column‖² (``act`` holds
    E[x²] per input, FLAP / Minitron's activation importance); or ``random``."""
    n = part.kv_heads if unit == "group" else part.heads
    out_unit = part.out_heads() // (part.rep if unit == "group" else 1)
    if importance == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cols = row_norms(matrix(part.out).t(), "l2" if importance == "activation" else importance)
    if importance == "activation":
        assert act is not None
        return torch.zeros(n, dtype=torch.float64).index_add_(0, out_unit, act.double().cpu() * cols)
    score = torch.zeros(n, dtype=torch.float64).index_add_(0, out_unit, cols)
    for p in part.projections:
        rows = row_norms(matrix(p.module), importance)
        units = part.row_groups(p) if unit == "group" else torch.where(p.kind == Q, p.head, -1)
        chosen = units >= 0
        score.index_add_(0, units[chosen], rows[chosen])
    return score


def head_scores(part: AttentionParts, importance: str = "l2", seed: int = 0, act: Tensor | None = None) -> Tensor:
    """One score per key/value group (see :func:`unit_scores`)."""
    return unit_scores(part, "group", importance, seed, act)


def _kept_queries(part: AttentionParts, scores: Tensor, per_group: int) -> Tensor:
    """The query heads kept: the ``per_group`` best of every key/value group."""
    chosen = [g * part.rep + top(scores[g * part.rep:(g + 1) * part.rep], per_group) for g in range(part.kv_heads)]
    return torch.cat(chosen)


def _apply_heads(part: AttentionParts, unit: str, kept: Tensor) -> None:
    """Keep units ``kept`` (groups or query heads) of one attention layer, in every projection."""
    out_heads = part.out_heads()
    if unit == "group":
        q_heads = (kept[:, None] * part.rep + torch.arange(part.rep)).flatten()
        for p in part.projections:
            keep_rows_(p.module, torch.isin(part.row_groups(p), kept).nonzero().reshape(-1))
    else:
        q_heads = kept
        for p in part.projections:
            alive = (p.kind != Q) | torch.isin(p.head, kept)
            keep_rows_(p.module, alive.nonzero().reshape(-1))
    keep_cols_(part.out, torch.isin(out_heads, q_heads).nonzero().reshape(-1))
    kv_kept = kept if unit == "group" else torch.arange(part.kv_heads)
    for norm, kind in part.norms:  # norms over all query (key) heads lose the removed heads' entries
        heads = q_heads if kind == Q else kv_kept
        for pname in ("weight", "bias"):
            w = getattr(norm, pname, None)
            if isinstance(w, Tensor):
                per_head = w.shape[0] * part.head_dim == w.numel()  # (heads, head_dim) rather than flat
                rows = heads if per_head else (heads[:, None] * part.head_dim + torch.arange(part.head_dim)).flatten()
                _slice_param(norm, pname, rows, 0)
        shape = getattr(norm, "normalized_shape", None)
        if isinstance(shape, tuple) and shape:
            norm.normalized_shape = (norm.weight.shape[0], *shape[1:])


def _holder_sizes_(part: AttentionParts, heads: int, kv: int) -> None:
    """Update the size attributes the attention module reads in its forward."""
    h, d = part.holder, part.head_dim
    values = {"num_heads": heads, "num_attention_heads": heads, "n_heads": heads, "num_key_value_heads": kv,
              "num_kv_heads": kv, "kv_heads": kv, "kv_dim": kv * d, "num_key_value_groups": heads // kv,
              "all_head_size": heads * d}
    if part.layout == "fused" and hasattr(h, "split_size"):
        values["split_size"] = heads * d  # GPT-2 splits c_attn's output at split_size
        if hasattr(h, "kv_dim"):
            values["embed_dim"] = heads * d  # GPTBigCode splits it at (embed_dim, kv_dim, kv_dim)
    for attr, value in values.items():
        if isinstance(getattr(h, attr, None), int) and not isinstance(getattr(h, attr), bool):
            setattr(h, attr, value)


def _settable(config: Any, name: str, declared: bool = True) -> bool:
    """Whether ``config.<name>`` may be written (a field, not a derived property; ``declared``: already present)."""
    if isinstance(getattr(type(config), name, None), property):
        return False
    return hasattr(config, name) or not declared


def _head_config(config: Any, heads: int, kv: int, d: int) -> dict[str, Any]:
    """The config fields that describe ``heads`` query and ``kv`` key/value heads of size ``d``."""
    changes: dict[str, Any] = {"num_attention_heads": heads}
    if getattr(config, "num_key_value_heads", None) is not None and _settable(config, "num_key_value_heads"):
        changes["num_key_value_heads"] = kv
    if _settable(config, "num_kv_heads") and (getattr(config, "new_decoder_architecture", False)
                                              or not getattr(config, "multi_query", False)):
        changes["num_kv_heads"] = kv  # Falcon; its multi-query layout has one key/value head whatever the field says
    if _settable(config, "head_dim", declared=False):
        changes["head_dim"] = d  # explicit, so that a config class reading getattr(config, "head_dim") rebuilds it
    return changes


def _choose_count(config: Any, units: int, wanted: int, sizes: Any) -> tuple[int, str | None]:
    """The unit count to keep: ``wanted`` when the config class accepts the sizes it gives, else the nearest
    count it accepts (preferring one that still prunes); returns the count and a note when it moved."""
    if wanted == units or config_accepts(config, sizes(wanted)) is None:
        return wanted, None
    why = config_accepts(config, sizes(wanted))
    options = [k for k in range(1, units) if config_accepts(config, sizes(k)) is None]
    if not options:
        return wanted, None  # nothing reloads; the caller reports it
    best = min(options, key=lambda k: (abs(k - wanted), -k))
    return best, f"kept {best} of {units} units instead of {wanted} so that from_pretrained reloads it ({why})"


FAR = 0.1  # a removed fraction this far from the asked one is reported (warned; strict=True: an error)


def reachable(units: int) -> list[float]:
    """The fractions of ``units`` equal units that can be removed while at least one stays."""
    return [i / units for i in range(units)]


def _layout_words(model: nn.Module, heads: int, kv: int) -> str:
    if kv == 1:
        return f"{type(model).__name__} has {heads} query heads sharing one key/value head (multi-query)"
    if kv == heads:
        return f"{type(model).__name__} has {heads} heads"
    return f"{type(model).__name__} has {heads} query heads in {kv} key/value groups"


def _choose_unit(unit: str, kv: int) -> str:
    """``auto``: query heads under multi-query attention (one key/value head), else whole key/value groups."""
    if unit != "auto":
        return unit
    return "query" if kv == 1 else "group"


def _uses_alibi(model: nn.Module, parts: list[AttentionParts]) -> bool:
    """ALiBi: a config flag (Falcon-RW, MPT) or an ``alibi`` argument of the attention's forward (BLOOM)."""
    if getattr(getattr(model, "config", None), "alibi", False):
        return True
    try:
        return "alibi" in inspect.signature(parts[0].holder.forward).parameters
    except (TypeError, ValueError):
        return False


def head_layout(model: nn.Module, caller: str) -> tuple[list[AttentionParts], int, int, int]:
    """The attention layers and their one layout (query heads, key/value heads, head_dim); a ValueError naming
    ``caller`` for a model with none, with layers of different layouts, or with ALiBi (nothing changed)."""
    parts = attention_layers(model)
    if not parts:
        raise ValueError(f"found no attention layers in {type(model).__name__}: looked for q_proj/k_proj/v_proj "
                         "(or query/key/value, q_lin/k_lin/v_lin) with an output projection, and for fused "
                         f"qkv_proj / c_attn / query_key_value; {caller} supports Hugging Face transformers")
    counts = {(p.heads, p.kv_heads, p.head_dim) for p in parts}
    if len(counts) != 1:
        raise ValueError(f"layers have different head layouts {sorted(counts)} (query heads, key/value heads, "
                         f"head_dim); {caller} needs uniform layers")
    if _uses_alibi(model, parts):
        raise ValueError(f"{type(model).__name__} uses ALiBi, whose per-head slopes depend on the head count: "
                         "removing heads would change every remaining head's bias; prune neurons or layers instead")
    heads, kv, d = counts.pop()
    return parts, heads, kv, d


def unit_sizes(config: Any, unit: str, heads: int, kv: int, d: int) -> Callable[[int], dict[str, Any]]:
    """The config fields after keeping ``k`` units: ``k`` key/value groups, or ``k`` query heads in every group."""
    rep = heads // kv
    if unit == "group":
        return lambda k: _head_config(config, k * rep, k, d)
    return lambda k: _head_config(config, kv * k, kv, d)


@renamed_args(ratio="sparsity")
def prune_heads_(model: nn.Module, sparsity: float = 0.25, importance: str = "l2", seed: int = 0,
                 calibration: Any = None, *, unit: str = "auto", finalize: bool = False,
                 reloadable: bool = True, strict: bool = False) -> HeadPruneReport:
    """Remove ``sparsity`` of the attention heads of every layer, the lowest-scoring per layer, the same
    count in every layer; the config is updated. ``unit``: ``group`` (whole key/value groups under GQA),
    ``query`` (query heads, the same number in every group) or ``auto`` (groups, unless there is a single
    key/value head). Only multiples of 1/groups
    (groups) or 1/(query heads per group) can be removed: the report lists the reachable fractions, and a
    result more than 0.1 from ``sparsity`` is warned (``strict=True``: an error, before anything changes).
    ``importance``: ``l1``/``l2`` (weights), ``random``, or ``activation`` (needs ``calibration``;
    recommended for pretrained LLMs). With ``reloadable`` (the default) the count may move to the nearest
    one the config class accepts, and a model that ``from_pretrained`` could not rebuild from its pruned
    config (GPT-2, BERT, BART, CLIP … derive the head size from the hidden size) is refused before anything
    changes; ``reloadable=False`` prunes it anyway (save it with ``torch.save``). A model that holds pruning
    masks is refused unless ``finalize=True`` bakes them in first. Michel et al., 2019."""
    s = check_common(sparsity, importance, calibration, "prune_heads_")
    if unit not in HEAD_UNITS:
        raise ValueError(f"unit must be one of {', '.join(HEAD_UNITS)}, got {unit!r}")
    parts, heads, kv, d = head_layout(model, "prune_heads_")
    config = getattr(model, "config", None)
    chosen = _choose_unit(unit, kv)
    rep = heads // kv
    units = kv if chosen == "group" else rep
    sizes = unit_sizes(config, chosen, heads, kv, d)
    wanted = keep_count(units, s)
    keep, note = _choose_count(config, units, wanted, sizes) if reloadable else (wanted, None)
    new_heads, new_kv = (keep * rep, keep) if chosen == "group" else (kv * keep, kv)
    notes: list[str] = []
    removed = 1 - new_heads / heads
    steps = reachable(units)
    if s > 0 and (abs(removed - s) > FAR or removed == 0):
        ways = (f"heads go by whole groups (unit='group': {_percent(reachable(kv))})" +
                (f" or by the same number of query heads in every group (unit='query': {_percent(reachable(rep))})"
                 if rep > 1 and kv > 1 else ""))
        why = (f"removed {removed:.0%} of the heads where {s:.0%} was asked: {_layout_words(model, heads, kv)}; "
               + (ways if kv > 1 else f"query heads go (reachable: {_percent(steps)})")
               + (f"; {note}" if note else ""))
        if strict:
            raise ValueError(f"prune_heads_: {why}. Nothing was changed; ask for a reachable fraction, or pass "
                             "strict=False to accept the nearest one")
        notes.append(why)
        warnings.warn(f"prune_heads_: {why}", StructuredPruningWarning, stacklevel=3)
    elif note:
        notes.append(note)
    problem = None
    if keep != units:
        if guard_masks(model, finalize, "prune_heads_"):
            finalize_masks_(model)  # the masks baked in (the model computes the same), then the twin is tried
        first = (lambda part, i: torch.arange(keep)) if chosen == "group" else \
            (lambda part, i: _kept_queries(part, torch.zeros(heads), keep))  # any choice has the same shapes
        problem = reload_problem_after(model, lambda twin: _remove_heads_(
            twin, attention_layers(twin), chosen, first, new_heads, new_kv, sizes(keep)))
        if problem and reloadable:
            raise ValueError(f"prune_heads_: from_pretrained could not rebuild {type(model).__name__} with "
                             f"{new_heads} query / {new_kv} key-value heads: {problem}. Nothing was changed; prune "
                             "neurons or layers (they reload), or pass reloadable=False to remove heads anyway and "
                             "save the model with torch.save")
    before = count_params(model)
    if keep != units:
        acts: list[Tensor | None] = [None] * len(parts)
        if importance == "activation":
            stats = collect_input_stats(model, {str(i): p.out for i, p in enumerate(parts)}, calibration)
            acts = [stats.mean_squares(str(i)) for i in range(len(parts))]

        def best(part: AttentionParts, i: int) -> Tensor:
            scores = unit_scores(part, chosen, importance, seed + i, acts[i])
            return top(scores, keep) if chosen == "group" else _kept_queries(part, scores, keep)

        _remove_heads_(model, parts, chosen, best, new_heads, new_kv, sizes(keep))
    if problem:
        notes.append(f"from_pretrained cannot rebuild it: {problem}; save it with torch.save")
        warnings.warn(f"prune_heads_: {problem}; from_pretrained cannot rebuild the pruned heads, save the model "
                      "with torch.save (neuron and block pruning do reload)", stacklevel=3)
    return HeadPruneReport(s, importance, chosen, len(parts), heads, new_heads, kv, new_kv, d, before,
                           count_params(model), problem is None, notes, steps)


def _percent(fractions: list[float]) -> str:
    return ", ".join(f"{f:.0%}" for f in fractions)


def _remove_heads_(model: nn.Module, parts: list[AttentionParts], chosen: str,
                   pick: Callable[[AttentionParts, int], Tensor], new_heads: int, new_kv: int,
                   config_fields: dict[str, Any]) -> None:
    """Keep the units ``pick(part, layer index)`` (groups or query heads) of every layer, and write the config."""
    for i, part in enumerate(parts):
        _apply_heads(part, chosen, pick(part, i))
        _holder_sizes_(part, new_heads, new_kv)
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in config_fields.items():
            setattr(config, name, value)


__all__ = ["HeadPruneReport", "attention_layers", "head_scores", "prune_heads_", "unit_scores"]
