"""Polarization regularization on BatchNorm scales, for a consensus sub-network found in one pass of training.

"Learning a Consensus Sub-Network with Polarization Regularization and One Pass Training" prunes while it
trains: a loss term drives the channels' scale factors apart, so that after the one training run the channels
fall into a group near zero (pruned) and a group clearly away from it (kept), with no fine-tuning round. The
polarizer is the one of Zhuang et al. (NeurIPS 2020, "Neuron-level Structured Pruning using Polarization
Regularizer"), over every BatchNorm scale γ in scope:

    R(γ) = t · ‖γ‖₁ − ‖γ − mean(γ)·1‖₁,    γ clamped to [0, a] after each step

The first term pulls every scale toward 0, the second pushes scales away from their mean, so the small ones
go to 0 and the large ones stay (t > 1 sets how many collapse). :meth:`Polarizer.select` then picks the
``sparsity`` fraction of smallest scales, which ``structured.prune_(..., importance="bn_scale")`` removes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.fraction import check_fraction


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that have a learnable scale, by name."""
    out = {n: m for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    if not out:
        raise ValueError("the model has no BatchNorm layer with a learnable scale (affine=True): the polarizer and "
                         "MaskSparsity regularize BatchNorm scales")
    return out


def polarization(gammas: list[Tensor], t: float) -> Tensor:
    """R(γ) = t·‖γ‖₁ − ‖γ − γ̄‖₁ over all the scales together (γ̄ their mean)."""
    g = torch.cat([x.reshape(-1) for x in gammas])
    return t * g.abs().sum() - (g - g.mean()).abs().sum()


class Polarizer:
    """The polarization term for a model's BatchNorm scales: add ``lam * polarizer.penalty()`` to the loss,
    call :meth:`clamp_` after each optimizer step, and :meth:`select` at the end."""

    def __init__(self, model: nn.Module, *, t: float = 1.2, lam: float = 1e-4, upper: float = 1.0) -> None:
        if not t > 0 or not lam >= 0 or not upper > 0:
            raise ValueError(f"the polarizer needs t > 0, lam >= 0 and upper > 0; got t={t}, lam={lam}, upper={upper}")
        self.norms = batchnorms(model)
        self.t, self.lam, self.upper = t, lam, upper

    def penalty(self) -> Tensor:
        """λ · R(γ), to add to the training loss."""
        return self.lam * polarization([m.weight for m in self.norms.values()], self.t)

    def clamp_(self) -> None:
        """Keep every scale in [0, upper], as the polarizer's analysis assumes."""
        with torch.no_grad():
            for m in self.norms.values():
                m.weight.clamp_(0, self.upper)

    def select(self, sparsity: float) -> dict[str, Tensor]:
        """For each BatchNorm, which channels the ``sparsity`` fraction of smallest scales (over all layers)
        marks for removal (True = prune)."""
        sparsity = check_fraction(sparsity, "sparsity")
        return smallest_scales(self.norms, sparsity)

    def gap(self) -> float:
        """The widest gap between consecutive sorted scales over their range: large when polarized."""
        g = torch.cat([m.weight.detach().reshape(-1) for m in self.norms.values()]).sort().values
        span = float(g[-1] - g[0])
        return float((g[1:] - g[:-1]).max()) / span if span > 0 and g.numel() > 1 else 0.0


def smallest_scales(norms: dict[str, nn.Module], sparsity: float) -> dict[str, Tensor]:
    """True for the channels among the globally smallest ``sparsity`` fraction of |γ| (ties: earlier first)."""
    flat = torch.cat([m.weight.detach().abs().reshape(-1) for m in norms.values()])
    k = round(sparsity * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        chosen[torch.argsort(flat, stable=True)[:k]] = True
    out, at = {}, 0
    for name, m in norms.items():
        out[name] = chosen[at: at + m.weight.numel()].clone()
        at += m.weight.numel()
    return out
