"""Random: uniform scores from a seeded generator, the control every method must beat."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, register_criterion


@register_criterion("random")
def random(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight with a uniform random number (deterministic under ``seed``)."""
    gen = torch.Generator().manual_seed(ctx.seed)
    return {t.name: torch.rand(t.shape, generator=gen) for t in targets}
