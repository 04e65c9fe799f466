"""PreCropping: channel counts at initialization from layerwise densities ("Structured Pruning is All You Need
for Pruning CNNs at Initialization", Cai et al., 2022).

The paper's finding: what makes a pruned-at-initialization CNN accurate is each layer's compression ratio, not
which weights go. So take the layerwise densities a pruning-at-initialization method picks (SynFlow, SNIP, …
with a global ranking), and turn them into channel counts: a convolution's weights (and its MACs) scale with
its input channels times its output channels, so with α_l the fraction of layer l's output channels kept,

    α_{l−1} · α_l ≈ d_l        (α_0 = 1: the image's channels; the head's classes stay)

solved in least squares on log α (clamped to (0, 1]). The narrower dense network is built and trained from
scratch: regular, dense storage and compute, no sparse kernels.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from ..core.allocate import allocate
from ..core.scope import Scope, select_targets
from ..criteria.base import CRITERIA, ScoreContext, score_targets


def precrop_ratios(densities: list[float], last_fixed: bool = True) -> list[float]:
    """Output-channel keep ratios α_1..α_L of a chain of layers with weight densities d_1..d_L, from
    α_{l−1}·α_l ≈ d_l (α_0 = 1; α_L = 1 when ``last_fixed``, the classifier's outputs), least squares in log
    space, each α in (0, 1]."""
    if not densities or any(not 0 < d <= 1 for d in densities):
        raise ValueError(f"densities must be in (0, 1], one per layer of the chain; got {densities}")
    n = len(densities)
    free = n - 1 if last_fixed else n  # unknowns: log α_1 .. log α_free
    if free == 0:
        return [1.0]
    rows, rhs = [], []
    for l, d in enumerate(densities):  # equation l: log α_{l-1} + log α_l = log d_l   (α index 0 = input)
        row = [0.0] * free
        for j in (l - 1, l):
            if 0 <= j < free:
                row[j] += 1.0
        rows.append(row)
        rhs.append(math.log(d))
    a = torch.tensor(rows, dtype=torch.float64)
    b = torch.tensor(rhs, dtype=torch.float64).unsqueeze(1)
    x = torch.linalg.lstsq(a, b).solution.squeeze(1).clamp(max=0.0)
    alphas = [math.exp(v) for v in x.tolist()]
    return alphas + ([1.0] if last_fixed else [])


def layer_densities(model: nn.Module, sparsity: float, criterion: str = "synflow", *, example_inputs: Any = None,
                    data: Any = None, loss_fn: Any = None, allocation: str = "global",
                    config: Any = None) -> dict[str, float]:
    """The fraction of each Linear/Conv layer's weights that ``criterion`` + ``allocation`` keep at ``sparsity``
    (the layerwise compression ratio PreCropping follows). Changes nothing."""
    targets = select_targets(model, Scope(skip_first_conv=False, skip_output=False))
    crit = CRITERIA.get(criterion)
    scores = score_targets(crit, model, targets, ScoreContext(data=data, loss_fn=loss_fn,
                                                              example_inputs=example_inputs, config=config))
    counts = allocate(scores, sparsity, allocation)
    return {t.name: 1 - counts[t.name] / t.numel for t in targets}


def precrop_widths(widths: Mapping[str, int], densities: Mapping[str, float], min_channels: int = 1) -> dict[str, int]:
    """Channel counts for a chain of layers (``widths``: layer → output channels, in order; the last is the head,
    kept whole) following their ``densities``."""
    names = list(widths)
    missing = [n for n in names if n not in densities]
    if missing:
        raise ValueError(f"no density for {', '.join(missing)}; densities name {', '.join(densities)}")
    alphas = precrop_ratios([max(densities[n], 1e-6) for n in names])
    return {n: max(min_channels, round(widths[n] * a)) for n, a in zip(names, alphas)}
