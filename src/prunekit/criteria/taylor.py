"""First-order Taylor importance (g·W)², averaged over batches (Molchanov et al., 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, accumulate_grads, register_criterion


@register_criterion("taylor", needs_data=True)
def taylor(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by the squared first-order change in loss on removing it, (g·W)², per batch."""
    totals = [torch.zeros(t.shape) for t in targets]

    def each(grads: list[Tensor], weights: list[Tensor]) -> None:
        for acc, g, w in zip(totals, grads, weights):
            acc += (g.detach().float() * w.float()).pow(2).cpu()

    n = accumulate_grads(model, targets, ctx, each)
    return {t.name: acc / n for t, acc in zip(targets, totals)}
