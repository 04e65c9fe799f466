"""Lottery Jackpots: a sparse mask searched on pre-trained weights that stay untouched (Chen et al., 2021/2023,
"Lottery Jackpots Exist in Pre-trained Models").

Every target weight gets a score, initialised to its magnitude (the paper's shortcut: magnitude pruning's mask
is already close to the jackpot). The forward pass uses w ⊙ m with m the top-k of the scores in each layer; the
scores train by the straight-through estimator (∂L/∂s = ∂L/∂(w⊙m) · w, as edge-popup), the weights never
change. After each optimizer step :meth:`Jackpot.update_masks_` moves the masks to the new top-k under the
paper's **short restriction**: a flip is kept only when its first-order effect on the loss is a decrease —
reviving weight i changes the loss by about g_i·w_i = ∂L/∂s_i, so a revival needs ∂L/∂s_i < 0 and a removal
∂L/∂s_i > 0 — and revivals and removals are paired (highest-scoring revivals with lowest-scoring removals) so
every layer keeps exactly k weights.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.mask import set_mask_
from ..core.scope import select_targets
from ..methods.prune import PruneReport
from .schedule import check_sparsity


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """True on the ``k`` highest scores (ties: lower flat index first)."""
    flat = scores.detach().reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.argsort(-flat, stable=True)
        keep[order[:k]] = True
    return keep.reshape(scores.shape)


def short_restriction(old: Tensor, scores: Tensor, grad: Tensor) -> Tensor:
    """The next mask: the top-k of ``scores`` (k = old's count), keeping only flips that lower the loss to first
    order (revive where ``grad`` < 0, remove where ``grad`` > 0), paired so the count stays k."""
    new = top_k_mask(scores, int(old.sum()))
    revive = (new & ~old & (grad < 0)).reshape(-1)
    remove = (old & ~new & (grad > 0)).reshape(-1)
    n = min(int(revive.sum()), int(remove.sum()))
    out = old.clone().reshape(-1)
    if n:
        s = scores.detach().reshape(-1)
        up = torch.nonzero(revive).reshape(-1)
        down = torch.nonzero(remove).reshape(-1)
        out[up[torch.argsort(-s[up], stable=True)[:n]]] = True
        out[down[torch.argsort(s[down], stable=True)[:n]]] = False
    return out.reshape(old.shape)


class _ScoredMask(nn.Module):
    def __init__(self, weight: Tensor, keep: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(weight.detach().abs().clone())
        self.register_buffer("mask", top_k_mask(self.scores, keep))

    def forward(self, weight: Tensor) -> Tensor:
        s = self.scores
        return weight * (self.mask.to(weight.dtype) + s - s.detach())  # straight-through to the scores


class Jackpot:
    """Search a ``sparsity`` mask (per layer) on the frozen weights of ``model``; optimise :meth:`parameters`
    (the scores), call :meth:`update_masks_` after each step and :meth:`finalize_` at the end."""

    def __init__(self, model: nn.Module, sparsity: float = 0.9, *, scope: Any = None,
                 restrict: bool = True) -> None:
        self.sparsity = check_sparsity(sparsity, "sparsity")
        targets = select_targets(model, scope)
        busy = [t.name for t in targets if parametrize.is_parametrized(t.module, t.param)]
        if busy:
            raise ValueError(f"Jackpot searches masks on a dense model, but {', '.join(busy[:3])} already carry a "
                             "mask or another parametrization: finalize or remove them first")
        self.model, self.targets, self.restrict = model, targets, restrict
        self.frozen = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self.before = {t.name: getattr(t.module, t.param).detach().clone() for t in targets}
        for t in targets:
            w = getattr(t.module, t.param)
            parametrize.register_parametrization(t.module, t.param, _ScoredMask(w, w.numel() - round(self.sparsity * w.numel())))
        self.flips = 0
        self.attached = True

    def _masks(self) -> Iterator[tuple[Any, _ScoredMask]]:
        for t in self.targets:
            yield t, t.module.parametrizations[t.param][0]

    def parameters(self) -> list[nn.Parameter]:
        """The scores: what the optimizer trains (the weights stay frozen)."""
        return [pm.scores for _, pm in self._masks()]

    @torch.no_grad()
    def update_masks_(self) -> int:
        """Move each layer's mask toward the top-k of its scores (under the short restriction when ``restrict``);
        returns how many weights changed state."""
        changed = 0
        for _, pm in self._masks():
            grad = pm.scores.grad if pm.scores.grad is not None else torch.zeros_like(pm.scores)
            if self.restrict:
                new = short_restriction(pm.mask, pm.scores, grad)
            else:
                new = top_k_mask(pm.scores, int(pm.mask.sum()))
            changed += int((new != pm.mask).sum())
            pm.mask.copy_(new)
        self.flips += changed
        return changed

    def finalize_(self) -> PruneReport:
        """Drop the scores, put the searched masks on the untouched weights, unfreeze what was trainable."""
        if not self.attached:
            raise ValueError("Jackpot.finalize_ was already called")
        masks = {t.name: pm.mask.clone() for t, pm in self._masks()}
        for t in self.targets:
            parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=False)
            set_mask_(t.module, masks[t.name], t.param)
        for p in self.model.parameters():
            p.requires_grad_(self.frozen.get(id(p), True))
        self.attached = False
        total = sum(m.numel() for m in masks.values())
        zeros = sum(int((~m).sum()) for m in masks.values())
        layers = {n: float((~m).float().mean()) for n, m in masks.items()}
        return PruneReport("jackpot", "unstructured", "uniform", self.sparsity, zeros / total, total, zeros, layers,
                           notes=[f"{self.flips} mask flips during the search; weights untouched"])
