"""DSnoT: Dynamic Sparse No Training (Zhang, Zhao, Lin, Zhang, Lin, Sun, Tian, Ji, Zhou & Ji, ICLR 2024,
"Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs").

A training-free refinement of a mask: start from Wanda's (or magnitude's, or RIA's) mask, then, row
by row, swap a pruned weight back in and a kept weight out, as long as the swap brings the row's
*expected* output back toward the dense one. With E[X_j] the mean of input j over the calibration
tokens, row i's output drifts by r_i = Σ_{j pruned} W_ij·E[X_j]. Each cycle revives the pruned weight
whose W_ij·E[X_j] (divided by Var[X_j]^``var_power``) most reduces r_i's sign-consistent magnitude and
prunes the kept weight with the lowest initial score among those whose contribution moves r_i the
same way; a row stops when |r_i| falls under ``update_threshold`` or a swap would flip r_i's sign,
and every row stops after ``max_cycles``. Each row keeps its count of zeros (for N:M, the pruned
weight comes from the revived weight's group of M), so sparsity and pattern are exactly the
initial mask's. No weight is updated. As the paper's code, layers matching ``skip`` (the MLPs) keep
their initial mask.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core.finite import check_finite
from ..core.mask import get_mask
from ..core.pattern import Pattern, mask_from_scores
from .base import PruneLog, PrunePlan, register_method
from .config import BlockwiseConfig
from .layerwise import BlockwiseMethod, Budget, is_transposed, rows_view, write_rows_
from .ria import ria_scores


class DSnoTConfig(BlockwiseConfig):
    """Settings of DSnoT (defaults as the paper's code: 50 cycles, threshold 0.1 on 2048-token windows)."""

    method: Literal["dsnot"] = "dsnot"
    initial: Literal["wanda", "magnitude", "ria"] = "wanda"
    max_cycles: int = Field(50, ge=0)
    # |r_i| below which a row stops, r_i the expected output drift per token (the paper's 0.1 was
    # summed over 2048-token windows: 0.1 / 2048 per token)
    update_threshold: float = Field(0.1 / 2048, ge=0)
    var_power: float = Field(1.0, ge=0)  # revive by W·E[X] / Var[X]^var_power
    skip: list[str] = Field(default_factory=lambda: ["*.mlp.*"])  # name globs that keep the initial mask



class ColumnSums:
    """Σ_tokens x_j of the inputs of ``modules`` while the hooks are attached (a context manager)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.sums: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> "ColumnSums":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            flat = args[0].detach().reshape(-1, args[0].shape[-1])
            s = flat.sum(0, dtype=torch.float64)
            if name in self.sums:
                self.sums[name] += s
                self.tokens[name] += flat.shape[0]
            else:
                self.sums[name] = s
                self.tokens[name] = flat.shape[0]
        return hook

    def mean(self, name: str) -> Tensor:
        """E[x_j] over the tokens seen."""
        return (self.sums[name] / self.tokens[name]).float()


def _initial_scores(kind: str, w: Tensor, col_norms: Tensor, keep: Tensor | None) -> Tensor:
    if kind == "magnitude":
        score = w.abs()
    elif kind == "ria":
        score = ria_scores(w, col_norms, 0.5)
    else:
        score = w.abs() * col_norms.reshape(1, -1)
    if keep is not None:
        score = score.masked_fill(~keep, float("-inf"))
    return score


def dsnot_refine(w: Tensor, keep: Tensor, score: Tensor, mean: Tensor, var: Tensor, *, max_cycles: int = 50,
                 update_threshold: float = 0.1 / 2048, var_power: float = 1.0, m: int = 0,
                 frozen: Tensor | None = None) -> tuple[Tensor, int]:
    """Refine the keep-mask ``keep`` of an (out, in) weight ``w`` by DSnoT's prune-and-grow cycles; returns
    (new keep-mask, number of swaps). ``score`` is the initial criterion (lower = pruned first), ``mean`` and
    ``var`` the inputs' per-column mean and variance; ``m`` > 0 keeps N:M groups of ``m`` intact; ``frozen``
    marks entries that must stay pruned (pruned before this call)."""
    out_, in_ = w.shape
    keep = keep.clone()
    contrib = w.float() * mean.reshape(1, -1)  # each weight's share of the row's expected output
    revive_key = contrib / var.clamp_min(1e-12).reshape(1, -1).pow(var_power)
    pruned0 = ~keep
    if frozen is not None:
        pruned0 = pruned0 & ~frozen
    r = (contrib * (~keep)).sum(1)  # expected drift: dense − sparse output
    sign0 = torch.sign(r)
    active = r != 0
    rows = torch.arange(out_)
    # revival candidates: initially pruned entries by revive_key, most negative first; pointers from both ends
    rk = revive_key.masked_fill(~pruned0, float("nan"))
    n_cand = pruned0.sum(1)
    order_g = torch.argsort(rk.nan_to_num(float("inf")), dim=1, stable=True)  # candidates first, then kept
    lo_g = torch.zeros(out_, dtype=torch.long)
    hi_g = n_cand - 1
    if not m:
        # pruning candidates: initially kept entries, lowest initial score first, split by the sign of their share
        kept0 = keep.clone()
        s_kept = score.masked_fill(~kept0, float("inf"))
        by_score = torch.argsort(s_kept, dim=1, stable=True)
        c_sorted = contrib.gather(1, by_score)
        valid = kept0.gather(1, by_score)
        neg = valid & (c_sorted < 0)
        pos = valid & (c_sorted > 0)
        neg_order = by_score.gather(1, torch.argsort((~neg).to(torch.int8), dim=1, stable=True))
        pos_order = by_score.gather(1, torch.argsort((~pos).to(torch.int8), dim=1, stable=True))
        n_neg, n_pos = neg.sum(1), pos.sum(1)
        p_neg = torch.zeros(out_, dtype=torch.long)
        p_pos = torch.zeros(out_, dtype=torch.long)
    else:
        block_score = score.masked_fill(~keep, float("inf")).clone()
        if frozen is not None:
            block_score = block_score.masked_fill(frozen, float("inf"))
    swaps = 0
    for _ in range(max_cycles):
        active &= r.abs() > update_threshold
        if not bool(active.any()):
            break
        grow_from_top = r > 0
        has_g = lo_g <= hi_g
        gi = torch.where(grow_from_top, hi_g, lo_g).clamp(0, in_ - 1)
        g_idx = order_g.gather(1, gi[:, None]).squeeze(1)
        c_g = contrib[rows, g_idx]
        ok = active & has_g & (torch.sign(c_g) == sign0)
        lo_g = torch.where(active & ~grow_from_top, lo_g + 1, lo_g)
        hi_g = torch.where(active & grow_from_top, hi_g - 1, hi_g)
        if not m:
            use_neg = r > 0  # prune a negative share when r > 0 (it lowers r), a positive one when r < 0
            p_idx_neg = neg_order.gather(1, p_neg.clamp(max=in_ - 1)[:, None]).squeeze(1)
            p_idx_pos = pos_order.gather(1, p_pos.clamp(max=in_ - 1)[:, None]).squeeze(1)
            p_idx = torch.where(use_neg, p_idx_neg, p_idx_pos)
            has_p = torch.where(use_neg, p_neg < n_neg, p_pos < n_pos)
            p_neg = torch.where(active & use_neg, p_neg + 1, p_neg)
            p_pos = torch.where(active & ~use_neg, p_pos + 1, p_pos)
        else:
            start = g_idx - g_idx % m
            members = start[:, None] + torch.arange(m)[None, :]
            cand = block_score.gather(1, members)
            best = cand.argmin(1)
            p_idx = members[rows, best]
            has_p = torch.isfinite(cand[rows, best])
        c_p = contrib[rows, p_idx]
        r_after = r + c_p - c_g
        ok &= has_p & (torch.sign(r_after) == sign0)
        active &= ok
        if not bool(ok.any()):
            break
        ro = rows[ok]
        keep[ro, p_idx[ok]] = False
        keep[ro, g_idx[ok]] = True
        if m:
            block_score[ro, p_idx[ok]] = float("inf")
        r = torch.where(ok, r_after, r)
        swaps += int(ok.sum())
    return keep, swaps


@register_method("dsnot", DSnoTConfig)
class DSnoT(BlockwiseMethod):
    """DSnoT (Zhang et al., 2024): Wanda's (or another) mask refined by training-free prune-and-grow swaps."""

    name = "dsnot"
    hessian = False
    prunes_experts = False  # it needs the inputs' means, collected for Linear layers only
    patterns = ("unstructured", "nm")

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Prune block by block, then count the swaps (``self.swaps``)."""
        self.swaps = 0
        self.refined: list[str] = []
        super().apply_(model, plan, sparsity, log)

    def collect(self, block: nn.Module, targets: list, inputs: list, device: Any, *args: Any, **kwargs: Any):
        """The base statistics (‖X_j‖) plus the inputs' column sums, for E[X_j] and Var[X_j]."""
        sums = ColumnSums({t.name: t.module for t in targets if getattr(t, "param", "weight") == "weight"})
        with sums:
            stats = super().collect(block, targets, inputs, device, *args, **kwargs)
        self._sums = sums
        return stats

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: Any, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, None]:
        """The initial mask of one (out, in) weight, refined by DSnoT unless ``key`` matches ``skip``."""
        o = plan.config
        sums = getattr(self, "_sums", None)
        calibrated = sums is not None and key in sums.sums
        norms = stats.col_norms(key) if calibrated else torch.ones(w.shape[1], device=w.device)
        score = _initial_scores(o.initial, w, norms.to(w.device), keep_old)
        check_finite(score.masked_fill(torch.isinf(score) & (score < 0), 0.0), "dsnot initial scores", key,
                     "the layer's inputs overflow or hold NaN (an earlier layer's outputs are not finite)")
        pattern = Pattern("row") if plan.pattern.kind == "unstructured" else plan.pattern
        keep = mask_from_scores(score, pattern, budget.prune_count(score.numel()))
        if keep_old is not None:
            keep &= keep_old.to(keep.device)
        if not calibrated or any(fnmatch(key, g) for g in o.skip):
            return keep, None
        mean = sums.mean(key).to(w.device)
        var = (stats.col_norms(key).to(w.device).square() / stats.n_tokens(key) - mean.square()).clamp_min(0)
        m = plan.pattern.m if plan.pattern.kind == "nm" else 0
        frozen = None if keep_old is None else ~keep_old.to(keep.device)
        keep, swaps = dsnot_refine(w, keep, score, mean, var, max_cycles=o.max_cycles,
                                   update_threshold=o.update_threshold,
                                   var_power=o.var_power, m=m, frozen=frozen)
        self.swaps = getattr(self, "swaps", 0) + swaps
        getattr(self, "refined", []).append(key)
        return keep, None

    def prune_layer(self, name: str, module: nn.Module, stats: Any, budget: Budget, plan: PrunePlan) -> None:
        """Prune one layer in place from its input statistics."""
        old = get_mask(module)
        keep_old = None if old is None else (old.t() if is_transposed(module) else old)
        keep, _ = self.prune_matrix(name, rows_view(module), keep_old, stats, budget, plan)
        write_rows_(module, keep)

