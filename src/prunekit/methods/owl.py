"""OWL: outlier-weighted layer-wise sparsity (Yin et al., 2024, "Outlier Weighed Layerwise Sparsity
(OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity").

Each transformer block gets a sparsity that falls as its Layerwise Outlier Distribution (LOD) rises:
the share of its weights whose score exceeds ``owl_m`` × the block's mean score. The LODs are
rescaled to [0, 2·``owl_lambda``] and shifted so that their mean density is 1 − sparsity, as the
paper's code does. Registered as the allocation ``"owl"``, so magnitude (scores |W|), Wanda and
SparseGPT (scores |W|·‖X‖ from a dense calibration pass) can all use it.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from ..core.allocate import ALLOCATIONS

_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def block_key(layer_name: str) -> str:
    """The block a layer belongs to: its name up to the first numeric component (``model.layers.3``)."""
    m = _BLOCK.match(layer_name)
    return m.group(1) if m else layer_name


def outlier_ratio(scores: list[Tensor], owl_m: float) -> float:
    """Percentage of a block's (finite) scores above ``owl_m`` times their mean: the block's LOD."""
    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in scores])
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return 0.0
    return float((flat > owl_m * flat.mean()).sum()) / flat.numel() * 100


def owl_sparsities(lods: Mapping[str, float], sparsity: float, owl_lambda: float = 0.08) -> dict[str, float]:
    """Per-block sparsity from the blocks' LODs: mean ``sparsity``, spread over ±``owl_lambda``."""
    if not 0 <= owl_lambda < 1:
        raise ValueError(f"owl_lambda must be in [0, 1), got {owl_lambda}")
    names = list(lods)
    ratio = torch.tensor([lods[n] for n in names], dtype=torch.float64)
    span = float(ratio.max() - ratio.min()) if len(names) else 0.0
    if span == 0:
        return {n: sparsity for n in names}
    ratio = (ratio - ratio.min()) / span * owl_lambda * 2
    density = ratio - ratio.mean() + (1 - sparsity)
    return {n: float(min(max(1 - d, 0.0), 1.0)) for n, d in zip(names, density.tolist())}


@ALLOCATIONS.register("owl")
def owl(scores: Mapping[str, Tensor], sparsity: float, owl_m: float = 5.0, owl_lambda: float = 0.08) -> dict[str, int]:
    """OWL allocation: blocks with more outlier scores (> ``owl_m`` × mean) keep more weights."""
    if owl_m <= 0:
        raise ValueError(f"owl_m must be positive, got {owl_m}")
    groups: dict[str, list[str]] = {}
    for name in scores:
        groups.setdefault(block_key(name), []).append(name)
    lods = {b: outlier_ratio([scores[n] for n in members], owl_m) for b, members in groups.items()}
    per_block = owl_sparsities(lods, sparsity, owl_lambda)
    return {n: round(per_block[block_key(n)] * s.numel()) for n, s in scores.items()}
