"""RIA: Relative Importance and Activations (Zhang, Bai, Lin, Wang, Zhang, Wang & Cannistraci, ICLR 2024,
"Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models").

Each weight is scored by its *relative* importance — its magnitude over the sum of magnitudes of
its output row plus its magnitude over the sum of its input column — times the norm of its input
feature raised to a power ``a`` (0.5 in the paper):

    RIA_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^a

The column term keeps whole input channels from being pruned away (Wanda's row-wise comparison
can empty an input channel; RIA compares the whole layer instead). For N:M patterns the paper adds
**channel permutation**: the input channels are reordered so that each group of M holds channels of
mixed importance (a heuristic deal of the sorted channels, then a linear-sum-assignment refinement
of each position of the groups), and the N:M mask is chosen in that order. A permutation must be
paid for where the layer runs: prunekit applies it only where it costs nothing and changes no
output — the ``down_proj`` of a gated MLP, whose input channels are the rows of ``gate_proj`` and
``up_proj``, which are permuted with it — so the saved model is a stock model whose masks are N:M in
storage order. Layers whose inputs are the residual stream or attention heads keep the plain N:M
mask. No weight is updated.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..calibrate import InputStats
from ..core.finite import check_finite
from ..core.mask import get_mask, weight_of
from ..core.pattern import Pattern, mask_from_scores
from .base import PruneLog, PrunePlan, register_method
from .config import BlockwiseConfig
from .layerwise import BlockwiseMethod, Budget, is_transposed, rows_view, write_rows_


class RIAConfig(BlockwiseConfig):
    """Settings of RIA (defaults as the paper)."""

    method: Literal["ria"] = "ria"
    activation_power: float = Field(0.5, ge=0)  # the paper's a: ‖X_j‖₂^a
    compare: Literal["layer", "row"] = "layer"  # unstructured comparison group: the whole layer (paper) or each row
    channel_permutation: bool = True  # N:M only: permute the inputs of gated-MLP down_proj (free and exact)
    permutation_rounds: int = Field(2, ge=0)  # linear-sum-assignment sweeps over the M positions



def ria_scores(w: Tensor, col_norms: Tensor, power: float = 0.5, keep: Tensor | None = None,
               name: str = "?") -> Tensor:
    """RIA's score of an (out, in) weight: relative importance times ‖X_j‖₂^power; entries outside ``keep``
    (already pruned) get -inf. Zero rows or columns have relative importance 0."""
    a = w.abs().float()
    if keep is not None:
        a = a * keep.to(a.device)
    row = a.sum(1, keepdim=True)
    col = a.sum(0, keepdim=True)
    rel = a / row.where(row > 0, torch.ones_like(row)) + a / col.where(col > 0, torch.ones_like(col))
    score = rel * col_norms.to(a.device, a.dtype).reshape(1, -1).pow(power)
    check_finite(score, "RIA scores", name,
                 "the layer's inputs overflow or hold NaN (an earlier layer's outputs are not finite)")
    if keep is not None:
        score = score.masked_fill(~keep.to(score.device), float("-inf"))
    return score


def nm_retained(score: Tensor, n: int, m: int) -> float:
    """Sum of the scores an N:M mask (along the inputs) keeps: the ``n`` largest of every ``m`` consecutive."""
    groups = score.reshape(score.shape[0], -1, m)
    return float(groups.topk(n, dim=-1).values.sum())


def nm_permutation(score: Tensor, n: int, m: int, rounds: int = 2) -> Tensor:
    """An order of the input channels (a permutation of ``range(in)``) under which an N:M mask of ``score``
    (out, in; non-negative) keeps as much score as this search finds, never less than the identity's.

    RIA's two steps: deal the channels, sorted by their total score, over the M positions of the groups
    (snake order, so every group gets one channel of each importance quantile); then, for each position
    p in turn, reassign the channels at p to the groups by a linear sum assignment. With the other M−1
    channels of a group fixed, the score a channel x keeps there is a constant of the group plus
    Σ_rows (x − min(x, a)), a being the (M−N)-th smallest of the others in that row, so the assignment
    minimises Σ_rows min(x, a) — an exact, cheap cost matrix.
    """
    from scipy.optimize import linear_sum_assignment

    s = score.float().clamp_min(0)
    cols = s.shape[1]
    groups = cols // m
    order = torch.argsort(s.sum(0), stable=True)
    index = torch.empty_like(order)
    for p in range(m):
        chunk = order[p * groups:(p + 1) * groups]
        index[p::m] = chunk if p % 2 == 0 else chunk.flip(0)
    k = m - n  # pruned per group
    for _ in range(rounds):
        changed = False
        for p in range(m):
            table = index.reshape(groups, m)
            others = torch.cat([table[:, :p], table[:, p + 1:]], dim=1)  # (G, m-1)
            a = s[:, others].sort(dim=-1).values[..., k - 1]  # (out, G): the k-th smallest of the others
            x = s[:, table[:, p]]  # (out, G): the candidates, one per group
            cost = torch.empty(groups, groups)
            step = max(1, (1 << 24) // max(1, s.shape[0] * groups))
            for g0 in range(0, groups, step):
                g1 = min(groups, g0 + step)
                cost[g0:g1] = torch.minimum(a[:, g0:g1, None], x[:, None, :]).sum(0)
            _, assign = linear_sum_assignment(cost.double().numpy())
            assign = torch.as_tensor(assign, dtype=torch.long)
            if not bool((assign == torch.arange(groups)).all()):
                changed = True
                table[:, p] = table[assign, p]
                index = table.reshape(-1)
        if not changed:
            break
    identity = torch.arange(cols)
    return index if nm_retained(s[:, index], n, m) > nm_retained(s, n, m) else identity


def _gated_mlp_producers(model_part: nn.Module | None) -> tuple[nn.Module, nn.Module] | None:
    """(gate_proj, up_proj) of a gated MLP whose down_proj reads act(gate(x)) * up(x), when both are plain
    bias-free Linear layers; else None."""
    if model_part is None:
        return None
    gate, up = getattr(model_part, "gate_proj", None), getattr(model_part, "up_proj", None)
    if not (isinstance(gate, nn.Linear) and isinstance(up, nn.Linear) and hasattr(model_part, "act_fn")):
        return None
    if gate.bias is not None or up.bias is not None:
        return None
    return gate, up


def _permute_rows_(module: nn.Module, perm: Tensor) -> None:
    """Reorder the output rows of a Linear layer's weight (and of its mask) by ``perm``."""
    leaf = weight_of(module)
    with torch.no_grad():
        leaf.copy_(leaf[perm.to(leaf.device)])
        mask = get_mask(module)
        if mask is not None:
            mask.copy_(mask[perm.to(mask.device)])


@register_method("ria", RIAConfig)
class RIA(BlockwiseMethod):
    """RIA (Zhang et al., 2024): relative importance × ‖X‖^a over the layer; N:M with free channel permutations."""

    name = "ria"
    hessian = False
    patterns = ("unstructured", "row", "nm")

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Prune block by block; remember the modules so that down_proj can find its gate/up siblings."""
        self._parents = {name: module for name, module in model.named_modules()}
        self._permuted: list[str] = []
        self._log = log
        super().apply_(model, plan, sparsity, log)
        wants = plan.pattern.kind == "nm" and plan.config.channel_permutation
        if wants and not self._permuted:
            warnings.warn("ria: channel_permutation found no layer whose inputs can be permuted for free (the "
                          "down_proj of a gated MLP); every layer got the plain N:M mask", stacklevel=3)
        self.permuted = list(self._permuted)

    def score(self, key: str, w: Tensor, keep_old: Tensor | None, stats: Any, plan: PrunePlan) -> Tensor:
        """RIA scores of one (out, in) weight from its inputs' column norms (|W| relative importance alone
        when the matrix saw no calibration token)."""
        seen = getattr(stats, "seen", None)
        calibrated = key in stats.owner if seen is None else seen(key)
        norms = stats.col_norms(key) if calibrated else torch.ones(w.shape[1], device=w.device)
        return ria_scores(w, norms, plan.config.activation_power, keep_old, key)

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: Any, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, None]:
        """The RIA keep-mask of one (out, in) weight (no permutation); weights unchanged."""
        score = self.score(key, w, keep_old, stats, plan)
        pattern = plan.pattern
        if pattern.kind == "unstructured" and plan.config.compare == "row":
            pattern = Pattern("row")
        return mask_from_scores(score, pattern, budget.prune_count(score.numel())), None

    def prune_layer(self, name: str, module: nn.Module, stats: InputStats, budget: Budget, plan: PrunePlan) -> None:
        """Prune one layer; a gated MLP's down_proj under N:M gets its input channels permuted first."""
        old = get_mask(module)
        keep_old = None if old is None else (old.t() if is_transposed(module) else old)
        w = rows_view(module)
        parent_name, _, leaf_name = name.rpartition(".")
        producers = _gated_mlp_producers(getattr(self, "_parents", {}).get(parent_name))
        if (plan.pattern.kind == "nm" and plan.config.channel_permutation and leaf_name == "down_proj"
                and producers is not None and not is_transposed(module)):
            score = self.score(name, w, keep_old, stats, plan)
            n, m = plan.pattern.n, plan.pattern.m
            perm = nm_permutation(score.masked_fill(~torch.isfinite(score), 0.0), n, m,
                                  plan.config.permutation_rounds)
            if not bool((perm == torch.arange(perm.numel())).all()):
                for mod in (module, *producers):
                    self._log.record(mod)
                for mod in producers:
                    _permute_rows_(mod, perm)
                leaf = weight_of(module)
                with torch.no_grad():
                    leaf.copy_(leaf[:, perm.to(leaf.device)])
                    if old is not None:
                        old.copy_(old[:, perm.to(old.device)])
                score = score[:, perm]
                self._permuted.append(name)
            keep = mask_from_scores(score, plan.pattern, 0)
            write_rows_(module, keep)
            return
        keep, _ = self.prune_matrix(name, w, keep_old, stats, budget, plan)
        if keep_old is not None:
            keep &= keep_old.to(keep.device)
        write_rows_(module, keep)

