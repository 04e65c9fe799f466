"""Magnitude: |W|, the classic baseline (Han et al., 2015)."""

from __future__ import annotations

from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, effective, register_criterion


@register_criterion("magnitude")
def magnitude(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by its absolute value."""
    return {t.name: effective(t).abs().float() for t in targets}
