"""SNIP: connection sensitivity |g ⊙ W| (Lee et al., 2019, "SNIP: Single-shot Network Pruning")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, accumulate_grads, register_criterion


@register_criterion("snip", needs_data=True)
def snip(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by |∂L/∂W ⊙ W|, with the gradient summed over the given batches."""
    totals = [torch.zeros(t.shape) for t in targets]

    def each(grads: list[Tensor], weights: list[Tensor]) -> None:
        for acc, g in zip(totals, grads):
            acc += g.detach().float().cpu()

    accumulate_grads(model, targets, ctx, each)
    return {t.name: (g * t.module.weight.detach().float().cpu()).abs() for t, g in zip(targets, totals)}
