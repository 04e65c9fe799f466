"""ALPS (Meng, Behdin, Wang & Mazumder, 2024, "ALPS: Improved Optimization for Highly Sparse One-Shot
Pruning for Large Language Models").

Each layer solves min ‖X(W₀ − W)‖² subject to W having the target number of non-zeros (per layer, or
N of every M inputs), by ADMM on the split W = D with D sparse: a ridge step
W = (XᵀX + ρI)⁻¹(XᵀXW₀ − V + ρD) through one eigendecomposition of XᵀX, a projection of W + V/ρ on
the sparsity set, a dual step, and a penalty ρ that grows as the support settles (faster while it
still moves); then the kept weights are refit exactly on the final support by conjugate gradients.
Where SparseGPT picks the mask greedily column by column, ALPS optimises the mask and the weights
together, which the paper reports pays most at 60–80% sparsity. Calibrated block by block, as
Wanda and SparseGPT (``sequential="layer"`` prunes each layer on its pruned predecessors' outputs).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..calibrate import InputStats
from ..core.mask import get_mask
from .base import PruneLog, PrunePlan, register_method
from .config import BlockwiseConfig
from .layerwise import BlockwiseMethod, Budget, is_transposed, rows_view
from .refit import cg_refit


class ALPSConfig(BlockwiseConfig):
    """Settings of ALPS (defaults as the paper's code)."""

    method: Literal["alps"] = "alps"
    rho: float = Field(0.1, gt=0)
    max_iter: int = Field(300, ge=1)
    update_iter: int = Field(3, ge=1)
    switch_iter: int = Field(30, ge=0)
    cg_iter: int = Field(10, ge=0)
    percdamp: float = Field(0.01, gt=0, lt=1)
    sequential: Literal["block", "layer"] = "layer"  # see SparseGPTConfig.sequential
    one_pass_max_gb: float | None = Field(None, gt=0)


ALPS_OPTIONS = ("rho", "max_iter", "update_iter", "switch_iter", "cg_iter", "percdamp")


def _project(b: Tensor, k_keep: int, n: int, m: int, allowed: Tensor | None) -> Tensor:
    """Keep-mask of the ``k_keep`` largest |b| (or the ``n`` largest of every ``m`` along the input dim); entries
    outside ``allowed`` are never kept. ``b`` is (in, out)."""
    score = b.square()
    if allowed is not None:
        score = score.masked_fill(~allowed, -1.0)
    if m:
        groups = score.t().reshape(-1, m)  # (out·in/m, m): consecutive inputs of one output
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.topk(n, dim=1).indices, True)
        return keep.reshape(b.shape[1], b.shape[0]).t()
    flat = score.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k_keep > 0:
        keep[flat.topk(k_keep).indices] = True
    return keep.reshape(b.shape)


def alps_prune(w: Tensor, h: Tensor, sparsity: float, n: int = 0, m: int = 0, *, keep: Tensor | None = None,
               rho: float = 0.1, max_iter: int = 300, update_iter: int = 3, switch_iter: int = 30,
               cg_iter: int = 10, percdamp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Prune an (out, in) weight ``w`` given its inputs' Gram matrix ``h`` (in × in); returns (new weight, keep-mask).

    ``n``:``m`` > 0 asks for N:M along the inputs, else ``sparsity`` of the whole matrix; ``keep`` marks entries
    still alive (the others stay pruned)."""
    w = w.float()
    h = h.double().clone()
    idx = torch.arange(h.shape[0], device=h.device)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h[idx, idx] += percdamp * torch.diag(h).mean()
    scale = torch.diag(h).sqrt()  # work on normalised inputs: XᵀX with a unit diagonal
    hn = (h / scale.reshape(-1, 1) / scale.reshape(1, -1)).float()
    b0 = (w * scale.float().reshape(1, -1)).t().contiguous()  # (in, out)
    b0[dead] = 0
    target = hn @ b0  # XᵀX W₀ in the normalised basis
    allowed = None if keep is None else keep.t().contiguous()
    k_keep = int(round((1 - sparsity) * b0.numel())) if not m else 0
    if allowed is not None and not m:
        k_keep = min(k_keep, int(allowed.sum()))
    evals, evecs = torch.linalg.eigh(hn.double())
    evals, evecs = evals.float(), evecs.float()

    def solve(rho_: float, rhs: Tensor) -> Tensor:
        return evecs @ ((evecs.t() @ rhs) / (evals + rho_).reshape(-1, 1))

    support = _project(b0, k_keep, n, m, allowed)
    d = b0 * support
    v = torch.zeros_like(b0)
    b = b0
    started = False  # whether ρ has begun to grow
    for it in range(max_iter):
        b = solve(rho, target - v + rho * d)
        new_support = _project(b + v / rho, k_keep, n, m, allowed)
        d = (b + v / rho) * new_support
        v = v + rho * (b - d)
        if (it + 1) % update_iter:
            support = new_support if it == 0 else support
            continue
        change = float((new_support != support).sum()) / max(1, int(new_support.sum()))
        support = new_support
        if change > 0.1:
            rho, started = rho * 1.3, True
        elif change > 0.005:
            rho, started = rho * 1.2, True
        elif change > 0:
            if started:
                rho *= 1.1
            else:  # the support barely moves from the start: the penalty is too strong, restart lower
                rho /= 5
                b, d, v = b0, b0 * support, torch.zeros_like(b0)
        elif started:
            break
        else:
            rho /= 5
        rho = min(rho, 1e6)
        if it >= switch_iter and change < 3e-4:
            break
    support = _project(b, k_keep, n, m, allowed)
    b = cg_refit(hn, target, b * support, support, cg_iter)
    new_w = (b.t() / scale.float().reshape(1, -1))
    keep_out = support.t().contiguous()
    new_w[:, dead] = 0
    return new_w * keep_out, keep_out


@register_method("alps", ALPSConfig)
class ALPS(BlockwiseMethod):
    """ALPS (Meng et al., 2024): ADMM on each layer's reconstruction with a sparsity constraint, then an exact refit."""

    name = "alps"
    hessian = True
    updates_weights = True
    patterns = ("unstructured", "nm")

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Prune block by block; with ``sequential="layer"`` in one forward per block (see :meth:`BlockwiseMethod.sequential_`)."""
        return self.sequential_(model, plan, sparsity, log)

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: Any, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, Tensor]:
        """Prune one (out, in) weight from the Gram matrix of its inputs; returns (keep-mask, new weight)."""
        opts = {k: getattr(plan.config, k) for k in ALPS_OPTIONS}
        n, m = (plan.pattern.n, plan.pattern.m) if plan.pattern.kind == "nm" else (0, 0)
        new_w, keep = alps_prune(w, stats.gram(key).to(w.device), budget.sparsity, n, m,
                                 keep=None if keep_old is None else keep_old.to(w.device), **opts)
        return keep, new_w

    def prune_layer(self, name: str, module: nn.Module, stats: InputStats, budget: Budget, plan: PrunePlan) -> None:
        """Prune one layer from the Gram matrix of its inputs."""
        old = get_mask(module)
        keep_old = None if old is None else (old.t() if is_transposed(module) else old)
        keep, new_w = self.prune_matrix(name, rows_view(module), keep_old, stats, budget, plan)
        self.write_layer_(module, keep, new_w, old is None)

