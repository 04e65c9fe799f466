"""LPViT (Xu et al., ECCV 2024, "LPViT: Low-Power Semi-structured Pruning for Vision Transformers"):
block-structured, hardware-aware post-training pruning of a ViT's linear layers.

Three steps:

1. **Block importance** from the second-order Taylor estimate of the loss change of removing a block b,
   ΔL_b ≈ ½ w_bᵀ H_b w_b, with the Hessian approximated by the empirical Fisher over the data's batches,
   H ≈ mean_batches g gᵀ, so ΔL_b ≈ ½ · mean_batches (g_b · w_b)² (g the batch's gradient; the first-order term
   is left out, as it averages to ~0 at a trained model). :func:`block_scores`.
2. **Hardware cost** of each block: the multiply-accumulates it takes part in per forward pass (its weights ×
   the rows its layer multiplies: tokens × batch for a Linear, output positions for a convolution), counted in
   the same forward passes that give the gradients; or its weight count (``cost="params"``). This is the paper's power /
   latency proxy without a look-up table: the parametrised connections removed. :func:`block_costs`.
3. **Allocation** under the budget: the ``sparsity`` is the fraction of the targets' cost removed, and the
   blocks go in order of least estimated loss per unit of cost saved (the greedy solution of the knapsack
   min Σ ΔL s.t. Σ cost removed ≥ budget), so each layer's block sparsity follows from the ranking.
   :func:`hardware_allocation`.

    prune_(vit, "lpvit", 0.5, pattern="block:4x4", data=batches, loss_fn=F.cross_entropy)
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import torch
from pydantic import field_validator
from torch import Tensor, nn

from ..core.finite import check_finite
from ..core.mask import get_mask, set_mask_
from ..core.pattern import Pattern, parse_pattern
from ..core.scope import Target
from ..criteria.base import accumulate_grads
from .base import PruneLog, PrunePlan, register_method
from .config import PruneConfig


class LPViTConfig(PruneConfig):
    """LPViT: block masks (``pattern="block:RxC"``) ranked by a Fisher second-order loss estimate per unit of
    hardware cost; ``sparsity`` is the fraction of the targets' ``cost`` removed: ``macs`` (multiply-accumulates
    per forward, counted on the data) or ``params`` (weights, the usual sparsity). Needs data and a
    loss. The per-layer block sparsities come from the cost ranking, so ``allocation`` stays ``uniform`` (unused)."""

    method: Literal["lpvit"] = "lpvit"
    pattern: str = "block:4x4"
    cost: Literal["macs", "params"] = "macs"

    @field_validator("pattern")
    @classmethod
    def _block_pattern(cls, v: str) -> str:
        pat = parse_pattern(v)
        if pat.kind != "block":
            raise ValueError(f"lpvit prunes whole blocks: use pattern='block:RxC' (e.g. 'block:4x4' or 'block:1x8'), "
                             f"not {v!r}")
        return str(pat)


def _block_view(t: Tensor, pattern: Pattern) -> Tensor:
    """(O, I, *k) → (O/R, I/C, R·C·k): each block's entries on the last axis (a conv block holds its kernels)."""
    r, c = pattern.rows, pattern.cols
    o, i = t.shape[0], t.shape[1]
    k = t[0, 0].numel() if t.dim() > 2 else 1
    return t.reshape(o // r, r, i // c, c, k).permute(0, 2, 1, 3, 4).reshape(o // r, i // c, r * c * k)


def block_dots(weight: Tensor, grad: Tensor, pattern: Pattern) -> Tensor:
    """g_b · w_b for every R×C block of ``weight`` (out, in, *kernel), shape (out/R, in/C), in float64."""
    return (_block_view(grad.detach().double(), pattern) * _block_view(weight.detach().double(), pattern)).sum(-1)


def block_scores(weight: Tensor, grads: list[Tensor], pattern: Pattern) -> Tensor:
    """LPViT's block importance of ``weight`` (out, in, *kernel): ½ · mean over ``grads`` of (g_b · w_b)², one
    score per R×C block, shape (out/R, in/C)."""
    if not grads:
        raise ValueError("block_scores needs at least one gradient")
    return 0.5 * sum(block_dots(weight, g, pattern).square() for g in grads) / len(grads)


def hardware_allocation(scores: Mapping[str, Tensor], costs: Mapping[str, float], budget: float) -> dict[str, int]:
    """How many blocks of each layer to remove so that the removed cost reaches ``budget``, taking blocks in order
    of score per unit cost (lowest first; ``-inf`` scores are already removed and not counted). ``scores``: name →
    block scores; ``costs``: name → the cost of one block of that layer (> 0). Ties go to the earlier layer and the
    lower block index."""
    names = list(scores)
    for n in names:
        if not costs[n] > 0:
            raise ValueError(f"the cost of a block of {n} must be positive, got {costs[n]}")
    if budget <= 0:
        return {n: 0 for n in names}
    ratio, owner, cost = [], [], []
    for li, n in enumerate(names):
        s = scores[n].detach().reshape(-1).double()
        live = s[~torch.isneginf(s)]
        ratio.append(live / costs[n])
        owner.append(torch.full((live.numel(),), li, dtype=torch.long))
        cost.append(torch.full((live.numel(),), float(costs[n]), dtype=torch.float64))
    ratio_all, owner_all, cost_all = torch.cat(ratio), torch.cat(owner), torch.cat(cost)
    order = torch.argsort(ratio_all, stable=True)  # the concatenation is in layer order, so ties keep it
    removed = torch.cumsum(cost_all[order], 0)
    if float(removed[-1]) < budget * (1 - 1e-12):
        raise ValueError(f"a removed cost of {budget:g} is out of reach: the blocks left hold {float(removed[-1]):g}")
    take = int(torch.searchsorted(removed, torch.tensor(budget * (1 - 1e-12), dtype=torch.float64))) + 1
    counts = torch.bincount(owner_all[order[:take]], minlength=len(names))
    return {n: int(counts[i]) for i, n in enumerate(names)}


def _matrix(t: Target, x: Tensor) -> Tensor:
    """``x`` (a weight-shaped tensor of ``t``) in (out, in, *kernel) layout."""
    return x.t() if t.transposed else x


class RowCounter:
    """Context manager: while open, count the rows each target's layer multiplies in forward passes (output
    elements / output channels: tokens × batch for a Linear, output positions for a convolution)."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.rows: dict[str, float] = {t.name: 0.0 for t in targets}
        self.handles: list[Any] = []

    def _hook(self, name: str, out_ch: int):
        def fn(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                self.rows[name] += output.numel() / out_ch
        return fn

    def __enter__(self) -> "RowCounter":
        self.handles = [t.module.register_forward_hook(self._hook(t.name, t.matrix_shape[0])) for t in self.targets]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def block_costs(targets: list[Target], pattern: Pattern, cost: str, rows: Mapping[str, float] | None = None
                ) -> dict[str, float]:
    """The cost of one block of each target: its weight count (``params``), times the rows its layer multiplied
    (``macs``; ``rows`` from a :class:`RowCounter`)."""
    size = {t.name: float(pattern.rows * pattern.cols * math.prod(t.matrix_shape[2:])) for t in targets}
    if cost == "params":
        return size
    if cost != "macs":
        raise ValueError(f"unknown lpvit cost {cost!r}; use 'macs' or 'params'")
    missing = [t.name for t in targets if not (rows or {}).get(t.name)]
    if missing:
        raise ValueError(f"lpvit cost='macs': the forward pass never ran {missing[:3]} (unused modules); use "
                         "cost='params' or leave them out of the scope")
    return {t.name: size[t.name] * rows[t.name] for t in targets}


class LPViTMethod:
    """Fisher block scores, block costs, the cost-ranked allocation, then whole-block masks."""

    name = "lpvit"
    prunes_experts = False

    def validate(self, model: nn.Module, plan: PrunePlan) -> None:
        if plan.context.data is None:
            raise ValueError("lpvit scores blocks by gradients: pass data= (batches of (inputs, targets)) and "
                             "loss_fn= (e.g. torch.nn.functional.cross_entropy)")
        if plan.config.allocation != "uniform":
            raise ValueError(f"lpvit sets each layer's block sparsity from its cost ranking; allocation="
                             f"{plan.config.allocation!r} does not apply: leave it out")
        for t in plan.targets:
            check_finite(getattr(t.module, t.param).detach(), "weights", t.name,
                         "the model holds NaN/inf weights before pruning with lpvit; reload it")

    def masks(self, model: nn.Module, plan: PrunePlan, sparsity: float) -> tuple[dict[str, Tensor], list[str]]:
        """The keep-mask of every target at ``sparsity`` of the cost, and notes for the report (changes nothing)."""
        targets, pattern = list(plan.targets), plan.pattern
        squares = {t.name: torch.zeros(1, dtype=torch.float64) for t in targets}  # Σ_batches (g_b · w_b)²

        def each(gs: list[Tensor], ws: list[Tensor]) -> None:
            for t, g, w in zip(targets, gs, ws):
                squares[t.name] = squares[t.name] + block_dots(_matrix(t, w.float().cpu()),
                                                               _matrix(t, g.float().cpu()), pattern).square()

        with RowCounter(targets) as counter:  # the gradient passes also count each layer's rows (for MACs)
            batches = accumulate_grads(model, targets, plan.context, each)
        scores, old_blocks = {}, {}
        for t in targets:
            s = 0.5 * squares[t.name] / batches
            check_finite(s, "lpvit block scores", t.name, "check the data batches, the loss and the weights for NaN/inf")
            old = get_mask(t.module, t.param)
            alive = torch.ones(s.shape, dtype=torch.bool)
            if old is not None:  # a block with any zero left is counted as removed: whole blocks only
                alive = _block_view(_matrix(t, old.cpu()).float(), pattern).amin(-1) > 0
            old_blocks[t.name] = alive
            scores[t.name] = s.masked_fill(~alive, -math.inf)
        costs = block_costs(targets, pattern, plan.config.cost, counter.rows)
        total = sum(costs[t.name] * scores[t.name].numel() for t in targets)
        done = sum(costs[t.name] * int((~old_blocks[t.name]).sum()) for t in targets)
        counts = hardware_allocation(scores, costs, sparsity * total - done)
        masks, per_layer, removed = {}, [], 0.0
        for t in targets:
            s = scores[t.name]
            keep = torch.ones(s.numel(), dtype=torch.bool)
            drop = torch.argsort(s.reshape(-1), stable=True)[: counts[t.name] + int((~old_blocks[t.name]).sum())]
            keep[drop] = False
            keep_blocks = keep.reshape(s.shape) & old_blocks[t.name]
            full = keep_blocks.repeat_interleave(pattern.rows, 0).repeat_interleave(pattern.cols, 1)
            shape = t.matrix_shape
            full = full.reshape(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape).clone()
            masks[t.name] = _matrix(t, full)
            per_layer.append(f"{t.name}={1 - float(keep_blocks.float().mean()):.3f}")
            removed += costs[t.name] * int((~keep_blocks).sum())
        notes = [f"lpvit removed {removed / total:.4f} of the targets' {plan.config.cost} (asked {sparsity:.4f}); "
                 f"block sparsity per layer: " + ", ".join(per_layer)]
        return masks, notes

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Compute every mask first, then put them all on the model."""
        masks, notes = self.masks(model, plan, sparsity)
        log.notes.extend(notes)
        with torch.no_grad():
            for t in plan.targets:
                set_mask_(t.module, masks[t.name], t.param)


register_method("lpvit", LPViTConfig)(LPViTMethod)
