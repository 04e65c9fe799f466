"""MLP neurons of Hugging Face transformers: the width pruning of LLM-Pruner (Ma et al., 2023) and Minitron
(Muralidharan et al., 2024). Every MLP of one width keeps the same number of neurons, chosen per layer by
importance, so the config describes the smaller model; MoE experts lose the same number of neurons
each, chosen per expert.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ...calibrate.moe import expert_rows_for_neurons, neuron_of_rows
from ...calibrate.stats import InputStats, collect_input_stats
from ...core.deprecation import renamed_args
from ...core.fraction import keep_count
from ..graph.report import count_params
from .common import (
    check_common, finalize_masks_, guard_masks, keep_cols_, keep_rows_, matrix, reload_problem_after,
    row_norms, top,
)
from .layouts import ExpertMLPs, MLPParts, all_mlps, expert_layers, groups_by_field, mlp_layers


@dataclass
class NeuronPruneReport:
    """What :func:`prune_neurons_` did: each width (by its config field) before and after."""

    sparsity: float
    importance: str
    widths: dict[str, tuple[int, int]]
    layers: int
    params_before: int
    params_after: int
    reloadable: bool
    notes: list[str] = field(default_factory=list)

    @property
    def intermediate_size(self) -> int:
        """The main MLP width after pruning (the dense MLPs', else the experts')."""
        return next(iter(self.widths.values()))[1]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return {**asdict(self), "widths": {k: list(v) for k, v in self.widths.items()}}

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} {a} → {b}" for k, (a, b) in self.widths.items())
        text = (f"neurons: {sizes} in {self.layers} MLPs, by {self.importance}; parameters "
                f"{self.params_before:,} → {self.params_after:,}")
        return "; ".join([text, *self.notes])


def neuron_scores(part: MLPParts, importance: str = "l2", seed: int = 0, act: Tensor | None = None) -> Tensor:
    """One score per intermediate neuron: its rows in gate/up (or fc1) and its column in down (fc2); with
    ``importance="activation"``, E[x²]·‖down column‖² of what it writes (``act`` = E[x²] per down input)."""
    n = part.width
    if importance == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cols = row_norms(matrix(part.out).t(), "l2" if importance == "activation" else importance)
    if importance == "activation":
        assert act is not None
        return act.double().cpu() * cols
    s = cols.clone()
    for lin, gated in part.ins:
        rows = row_norms(matrix(lin), importance)
        s = s + (rows[:n] + rows[n:] if gated else rows)
    return s


def expert_neuron_scores(experts: ExpertMLPs, expert: int, importance: str = "l2", seed: int = 0,
                         act: Tensor | None = None) -> Tensor:
    """One score per intermediate neuron of one fused expert (as :func:`neuron_scores`)."""
    fe, n = experts.fused, experts.width
    if importance == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    down = fe.matrix(fe.down, expert).double()
    cols = row_norms(down.t(), "l2" if importance == "activation" else importance)
    if importance == "activation":
        assert act is not None
        return act.double().cpu() * cols
    up = row_norms(fe.matrix(fe.up, expert).double(), importance)
    return cols.index_add_(0, neuron_of_rows(fe), up)


def _apply_neurons(part: MLPParts, kept: Tensor) -> None:
    n = part.width
    for lin, gated in part.ins:
        keep_rows_(lin, torch.cat([kept, kept + n]) if gated else kept)
    keep_cols_(part.out, kept)
    if part.holder is not None and isinstance(getattr(part.holder, "intermediate_size", None), int):
        part.holder.intermediate_size = len(kept)


def _apply_expert_neurons(experts: ExpertMLPs, kept: list[Tensor]) -> None:
    fe = experts.fused
    m = fe.module
    up, down = fe.leaf(fe.up).detach(), fe.leaf(fe.down).detach()
    new_up, new_down = [], []
    for e, k in enumerate(kept):
        rows = expert_rows_for_neurons(fe, k)
        new_up.append(up[e][:, rows] if fe.transposed else up[e][rows])
        new_down.append(down[e][k] if fe.transposed else down[e][:, k])
    setattr(m, fe.up, nn.Parameter(torch.stack(new_up).contiguous(), requires_grad=up.requires_grad))
    setattr(m, fe.down, nn.Parameter(torch.stack(new_down).contiguous(), requires_grad=down.requires_grad))
    bias = getattr(m, f"{fe.up}_bias", None)
    if isinstance(bias, Tensor):
        rows = [expert_rows_for_neurons(fe, k) for k in kept]
        setattr(m, f"{fe.up}_bias", nn.Parameter(torch.stack([bias[e][r] for e, r in enumerate(rows)]).detach()))
    for attr in ("intermediate_dim", "intermediate_size", "expert_dim"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, len(kept[0]))


@renamed_args(ratio="sparsity")
def prune_neurons_(model: nn.Module, sparsity: float = 0.25, importance: str = "l2", seed: int = 0,
                   calibration: Any = None, *, finalize: bool = False, reloadable: bool = True) -> NeuronPruneReport:
    """Remove ``sparsity`` of the intermediate neurons of every MLP (gate, up and down together; every MoE
    expert, and the shared expert, alike), the lowest-scoring per layer (per expert), the same count in every
    MLP of one width; updates the config field of each width (``intermediate_size``, ``ffn_dim``,
    ``n_inner``, ``moe_intermediate_size``, ``shared_expert_intermediate_size`` …). ``importance`` as in
    :func:`~prunekit.structured.transformers.heads.prune_heads_`. A width no config field gives (BLOOM's
    4 × hidden) would not reload: with ``reloadable`` (the default) such a model is refused before anything
    changes, ``reloadable=False`` prunes it anyway. A model that holds pruning masks is refused unless
    ``finalize=True``.
    LLM-Pruner (Ma et al., 2023) / Minitron (Muralidharan et al., 2024) width pruning."""
    s = check_common(sparsity, importance, calibration, "prune_neurons_")
    dense, experts = all_mlps(model)
    if not dense and not experts:
        raise ValueError(f"found no MLP in {type(model).__name__}: looked for gate/up/down_proj, gate_up_proj/"
                         "down_proj, fc1/fc2, c_fc/c_proj, dense_h_to_4h/dense_4h_to_h, intermediate/output and "
                         "fused MoE experts")
    plan: dict[str | None, tuple[list[Any], int, int]] = {}
    for fieldname, members in groups_by_field([*dense, *experts]).items():
        widths = {m.width for m in members}
        if len(widths) != 1:
            raise ValueError(f"MLPs sized by {fieldname or 'no config field'} have different widths "
                             f"{sorted(widths)}; prune_neurons_ needs one width per config field")
        n = widths.pop()
        plan[fieldname] = (members, n, keep_count(n, s))
    changed = any(keep != n for _, n, keep in plan.values())
    keeps = {f: keep for f, (_, _, keep) in plan.items()}
    notes: list[str] = []
    problem = None
    if changed:
        if guard_masks(model, finalize, "prune_neurons_"):
            finalize_masks_(model)  # the masks baked in (the model computes the same), then the twin is tried
        problem = reload_problem_after(model, lambda twin: _remove_neurons_(
            twin, keeps, lambda member, e, keep: torch.arange(keep)))  # any choice has the same shapes
        if problem and reloadable:
            raise ValueError(f"prune_neurons_: from_pretrained could not rebuild the pruned {type(model).__name__}: "
                             f"{problem}. Nothing was changed; pass reloadable=False to remove the neurons anyway "
                             "and save the model with torch.save")
    before = count_params(model)
    if changed:
        stats = _neuron_stats(model, dense, experts, calibration) if importance == "activation" else None
        uncalibrated = [0]

        def best(member: Any, e: int | None, keep: int) -> Tensor:
            if e is None:
                act = stats.mean_squares(member.name) if stats is not None else None
                return top(neuron_scores(member, importance, seed + member_index[id(member)], act), keep)
            key = member.fused.key(member.fused.down, e)
            imp = importance
            if stats is not None and not stats.seen(key):
                imp, uncalibrated[0] = "l2", uncalibrated[0] + 1
            act = stats.mean_squares(key) if imp == "activation" else None
            return top(expert_neuron_scores(member, e, imp, seed + member_index[id(member)], act), keep)

        member_index = {id(m): i for members, _, _ in plan.values() for i, m in enumerate(members)}
        _remove_neurons_(model, keeps, best, {f: members for f, (members, _, _) in plan.items()})
        if uncalibrated[0]:
            notes.append(f"{uncalibrated[0]} experts received no calibration token and were ranked by weights (l2)")
    if problem:
        notes.append(f"from_pretrained cannot rebuild it: {problem}; save it with torch.save")
        warnings.warn(f"prune_neurons_: {problem}", stacklevel=3)
    widths = {(f or "unnamed"): (n, keep) for f, (_, n, keep) in plan.items()}
    return NeuronPruneReport(s, importance, widths, len(dense) + len(experts), before, count_params(model),
                             problem is None, notes)


def _remove_neurons_(model: nn.Module, keeps: dict[str | None, int], pick: Callable[[Any, int | None, int], Tensor],
                     groups: dict[str | None, list[Any]] | None = None) -> None:
    """Keep ``keeps[field]`` neurons of every MLP sized by that config field (``groups``, found when not given) —
    ``pick(mlp, expert or None, keep)`` — and write the config fields."""
    if groups is None:
        groups = groups_by_field([*sum(all_mlps(model), [])])
    for fieldname, members in groups.items():
        keep = keeps[fieldname]
        for member in members:
            if member.width == keep:
                continue
            if isinstance(member, MLPParts):
                _apply_neurons(member, pick(member, None, keep))
            else:
                _apply_expert_neurons(member, [pick(member, e, keep) for e in range(member.fused.num_experts)])
    config = getattr(model, "config", None)
    for fieldname, keep in keeps.items():
        if fieldname is not None and config is not None:
            setattr(config, fieldname, keep)


def _neuron_stats(model: nn.Module, dense: list[MLPParts], experts: list[ExpertMLPs], calibration: Any) -> InputStats:
    return collect_input_stats(model, {p.name: p.out for p in dense}, calibration,
                               experts={e.name: e.fused for e in experts})


__all__ = ["NeuronPruneReport", "expert_layers", "expert_neuron_scores", "mlp_layers", "neuron_scores",
           "prune_neurons_"]
