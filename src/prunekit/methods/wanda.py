"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, 2023, "A Simple and Effective
Pruning Approach for Large Language Models").

Each weight is scored |W_ij|·‖X_j‖₂, with ‖X_j‖₂ the norm of input feature j over the calibration
tokens, and compared only with the other weights of its output row (or of its M-group for N:M).
Faithful to the paper's code: the model is calibrated block by block, each block's pruned outputs
feeding the next block. No weight is updated.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..calibrate import InputStats
from ..core.pattern import Pattern, mask_from_scores
from .base import PrunePlan, register_method
from .config import BlockwiseConfig
from .layerwise import BlockwiseMethod, Budget, wanda_matrix_scores


class WandaConfig(BlockwiseConfig):
    """Wanda (Sun et al., 2023): |W|·‖X‖₂ per output row, calibrated block by block."""

    method: Literal["wanda"] = "wanda"


@register_method("wanda", WandaConfig)
class Wanda(BlockwiseMethod):
    """Wanda (Sun et al., 2023): |W|·‖X‖₂ per output row, calibrated block by block."""

    name = "wanda"
    hessian = False
    patterns = ("unstructured", "row", "nm", "block")

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: InputStats, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, None]:
        """Mask the lowest |W|·‖X‖ of every output row (or of every M-group, or whole blocks). A matrix that saw
        no calibration token (an expert the router never chose) is ranked by |W| alone."""
        norms = stats.col_norms(key) if stats.seen(key) else torch.ones(w.shape[1], device=w.device)
        score = wanda_matrix_scores(w, norms, keep_old, key)
        # The paper's comparison group for unstructured sparsity is the output row.
        pattern = Pattern("row") if plan.pattern.kind == "unstructured" else plan.pattern
        return mask_from_scores(score, pattern, budget.prune_count(score.numel())), None

