"""PDP: parameter-free differentiable pruning (Cho et al., "PDP: Parameter-free Differentiable Pruning is All
You Need", NeurIPS 2023).

While training, every weight is multiplied by a soft mask made from the weights themselves, with no extra
parameter: for a layer whose target sparsity is r, t² is the midpoint between the largest squared weight that
r would prune and the smallest it would keep, and

    m = sigmoid((w² − t²) / τ)

so weights well below the threshold fade out while still receiving gradients (through both w and m), and the
ones near it can cross. :meth:`PDP.finalize_` swaps the soft masks for hard ones at the same threshold (keep
w² > t², i.e. magnitude at r per layer) and reports the result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.scope import select_targets
from ..methods.prune import PruneReport, prune_
from .schedule import check_sparsity


def pdp_threshold(weight: Tensor, sparsity: float) -> Tensor:
    """t²: the midpoint between the largest squared weight that ``sparsity`` prunes and the smallest it keeps
    (below every w² at sparsity 0, above every one at sparsity 1)."""
    z = weight.detach().reshape(-1).square().sort().values
    k = round(sparsity * z.numel())  # how many go (as the uniform allocation counts them)
    if k <= 0:
        return z[0] - 1
    if k >= z.numel():
        return z[-1] + 1
    return (z[k - 1] + z[k]) / 2


def pdp_mask(weight: Tensor, sparsity: float, tau: float) -> Tensor:
    """The PDP soft mask sigmoid((w² − t²)/τ) of ``weight`` at ``sparsity``; differentiable in ``weight``
    (the threshold itself is held fixed at each step, as the paper's implementation does)."""
    return torch.sigmoid((weight.square() - pdp_threshold(weight, sparsity)) / tau)


class _SoftMask(nn.Module):
    def __init__(self, sparsity: float, tau: float) -> None:
        super().__init__()
        self.sparsity, self.tau = sparsity, tau

    def forward(self, weight: Tensor) -> Tensor:
        return weight * pdp_mask(weight, self.sparsity, self.tau)


class PDP:
    """Train with PDP soft masks on the weights ``scope`` selects, each layer at ``sparsity``.

    ``tau`` is the sigmoid's temperature in units of w² (the paper's τ; small = nearly hard). Construct, train
    as usual (the soft masks are parametrizations, so any optimizer on ``model.parameters()`` works), then call
    :meth:`finalize_`.
    """

    def __init__(self, model: nn.Module, sparsity: float = 0.9, *, tau: float = 1e-4, scope: Any = None) -> None:
        self.sparsity = check_sparsity(sparsity, "sparsity")
        if not tau > 0:
            raise ValueError(f"tau must be > 0 (the soft mask's temperature, in units of w²); got {tau}")
        targets = select_targets(model, scope)
        busy = [t.name for t in targets if parametrize.is_parametrized(t.module, t.param)]
        if busy:
            raise ValueError(f"PDP trains a dense model, but {', '.join(busy[:3])} already carry a mask or another "
                             "parametrization: finalize or remove them first (prunekit.core.mask.finalize_)")
        self.model, self.tau, self.scope, self.targets = model, tau, scope, targets
        for t in targets:
            parametrize.register_parametrization(t.module, t.param, _SoftMask(self.sparsity, tau))
        self.attached = True

    def soft_sparsity(self) -> float:
        """Σ(1 − m) / n over the targets: how much of the weights the soft masks take away now."""
        with torch.no_grad():
            gone = sum(float((1 - pdp_mask(t.module.parametrizations[t.param].original, self.sparsity,
                                           self.tau)).sum()) for t in self.targets)
        return gone / sum(t.numel for t in self.targets)

    def finalize_(self) -> PruneReport:
        """Replace the soft masks by hard masks (keep w² > t² in each layer) and return the prune report."""
        if not self.attached:
            raise ValueError("PDP.finalize_ was already called: the soft masks are gone")
        for t in self.targets:
            parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=False)
        self.attached = False
        names = [t.name for t in self.targets]
        return prune_(self.model, "magnitude", self.sparsity, allocation="uniform",
                      scope={"include": names, "skip_first_conv": False, "skip_output": False}, progress=False)
