"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, 2023, "A Simple and Effective
Pruning Approach for Large Language Models").

Each weight is scored |W_ij|·‖X_j‖₂, with ‖X_j‖₂ the norm of input feature j over the calibration
tokens, and compared only with the other weights of its output row (or of its M-group for N:M).
Faithful to the paper's code: the model is calibrated block by block, each block's pruned outputs
feeding the next block. No weight is updated.
"""

from __future__ import annotations

from torch import nn

from ..calibrate import InputStats
from ..core.pattern import Pattern, mask_from_scores
from .base import METHODS, PrunePlan
from .config import WandaConfig
from ..core.mask import get_mask
from .layerwise import BlockwiseMethod, is_transposed, wanda_scores, write_rows_


class Wanda(BlockwiseMethod):
    """Wanda (Sun et al., 2023): |W|·‖X‖₂ per output row, calibrated block by block."""

    name = "wanda"
    hessian = False
    patterns = ("unstructured", "row", "nm", "block")

    def prune_layer(self, name: str, module: nn.Module, stats: InputStats, sparsity: float, plan: PrunePlan) -> None:
        """Mask the lowest |W|·‖X‖ of every output row (or of every M-group, or whole blocks)."""
        score = wanda_scores(module, stats.col_norms(name), name)
        # The paper's comparison group for unstructured sparsity is the output row.
        pattern = Pattern("row") if plan.pattern.kind == "unstructured" else plan.pattern
        keep = mask_from_scores(score, pattern, round(sparsity * score.numel()))
        old = get_mask(module)
        if old is not None:
            keep &= (old.t() if is_transposed(module) else old).to(keep.device)
        write_rows_(module, keep)


METHODS.add("wanda", Wanda, WandaConfig)
