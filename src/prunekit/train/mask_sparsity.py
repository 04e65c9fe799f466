"""MaskSparsity: pruning-aware sparse regularization (Jiang et al., 2022, "Pruning-aware Sparse Regularization
for Network Pruning").

Sparsity training usually puts an L1 penalty on every BatchNorm scale, which also shrinks the channels that
will be kept and under-fits. MaskSparsity first fixes a pruning mask (here: the globally smallest |γ|, or any
mask given), then penalizes only the scales the mask marks for removal:

    R = λ · Σ_{c ∈ pruned} |γ_c|

so the doomed channels go to zero while the kept ones train freely; after training,
``structured.prune_(..., importance="bn_scale")`` at the same sparsity removes exactly them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from ..core.fraction import check_fraction
from .polarization import batchnorms, smallest_scales


class MaskSparsity:
    """L1 on the BatchNorm scales of the channels selected for pruning, and only those.

    ``masks`` (BatchNorm name → bool tensor, True = to prune) fixes the selection; without it, the ``sparsity``
    fraction of smallest |γ| over all BatchNorm layers is chosen at construction.
    """

    def __init__(self, model: nn.Module, sparsity: float = 0.5, *, lam: float = 1e-4,
                 masks: Mapping[str, Tensor] | None = None) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0; got {lam}")
        self.norms = batchnorms(model)
        if masks is None:
            self.masks = smallest_scales(self.norms, check_fraction(sparsity, "sparsity"))
        else:
            unknown = sorted(set(masks) - set(self.norms))
            if unknown:
                raise ValueError(f"masks name {', '.join(unknown[:3])}, which are not BatchNorm layers of the model; "
                                 f"known: {', '.join(list(self.norms)[:5])}")
            self.masks = {}
            for name, m in self.norms.items():
                mask = masks.get(name, torch.zeros(m.weight.numel(), dtype=torch.bool))
                if tuple(mask.shape) != (m.weight.numel(),) or mask.dtype != torch.bool:
                    raise ValueError(f"the mask of {name} must be a bool tensor of shape ({m.weight.numel()},); got "
                                     f"{mask.dtype} {tuple(mask.shape)}")
                self.masks[name] = mask.clone()
        self.lam = lam

    @property
    def selected(self) -> int:
        """How many channels the penalty acts on."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def penalty(self) -> Tensor:
        """λ · Σ |γ| over the selected channels, to add to the training loss."""
        terms = [m.weight[self.masks[n].to(m.weight.device)].abs().sum() for n, m in self.norms.items()]
        return self.lam * torch.stack(terms).sum()
