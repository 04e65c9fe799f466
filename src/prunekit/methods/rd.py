"""Rate-distortion layer-adaptive magnitude pruning (Xu et al., 2023, "Efficient Joint Optimization of
Layer-Adaptive Weight Pruning in Deep Neural Networks").

For every layer and every sparsity of a grid, prune that layer alone by magnitude and measure the output
distortion ‖f(x) − f̃(x)‖² on calibration inputs. The paper finds these distortions add up over layers, so the
per-layer sparsities that minimise the total under a budget come from a dynamic programme over the layers
(:func:`prunekit.core.allocate.rd_solve`); within each layer the smallest weights go.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core.allocate import rd_solve
from ..core.finite import check_finite
from ..core.mask import get_mask, set_mask_, weight_of
from ..core.pattern import mask_from_scores, parse_pattern
from ..infra.calling import call_model, output_tensor
from .base import PruneLog, PrunePlan, register_method
from .config import PruneConfig


_UNSTRUCTURED = parse_pattern("unstructured")


class RDConfig(PruneConfig):
    """Layer-adaptive magnitude pruning whose per-layer sparsities minimise the summed output distortion
    (measured on ``example_inputs`` or the ``data`` batches' inputs) at each of ``grid`` sparsities per layer."""

    method: Literal["rd"] = "rd"
    grid: int = Field(20, ge=2, le=200, description="sparsities tried per layer: 0, 1/grid, …, (grid-1)/grid")


def _inputs(plan: PrunePlan) -> list[Any]:
    ctx = plan.context
    if ctx.example_inputs is not None:
        return [ctx.example_inputs]
    return [b[0] if isinstance(b, (tuple, list)) and len(b) == 2 else b for b in ctx.batches()]


def distortion_curves(model: nn.Module, targets: list, scores: dict[str, Tensor], inputs: list[Any],
                      grid: int) -> dict[str, list[tuple[int, float]]]:
    """For each target, (pruned count, ‖f(x) − f̃(x)‖² summed over ``inputs``) at sparsities 0, 1/grid, … with
    only that layer pruned by ``scores`` (its weights restored after each try)."""
    was = model.training
    model.eval()
    curves: dict[str, list[tuple[int, float]]] = {}
    try:
        with torch.no_grad():
            ref = [output_tensor(call_model(model, x)).double() for x in inputs]
            for t in targets:
                leaf = weight_of(t.module, t.param)
                keep_old = get_mask(t.module, t.param)
                saved = leaf.detach().clone()
                alive = int(keep_old.sum()) if keep_old is not None else leaf.numel()
                curve = [(0, 0.0)]
                for i in range(1, grid):
                    c = round(alive * i / grid)
                    if c == 0:
                        continue
                    keep = mask_from_scores(scores[t.name], _UNSTRUCTURED, c + (leaf.numel() - alive))
                    leaf.mul_(keep.to(leaf.device, leaf.dtype))
                    try:
                        d = sum(float((output_tensor(call_model(model, x)).double() - r).square().sum())
                                for x, r in zip(inputs, ref))
                    finally:
                        leaf.copy_(saved)  # the try never outlives its measurement
                    curve.append((c, d))
                curves[t.name] = curve
    finally:
        model.train(was)
    return curves


class RDMethod:
    """Magnitude scores, per-layer counts from the measured distortion curves' dynamic programme."""

    name = "rd"
    prunes_experts = False

    def validate(self, model: nn.Module, plan: PrunePlan) -> None:
        if plan.context.example_inputs is None and plan.context.data is None:
            raise ValueError("rd measures output distortion: pass example_inputs= (a batch of model inputs) or data=")
        if plan.pattern.kind != "unstructured":
            raise ValueError(f"rd chooses per-layer counts of single weights: use pattern='unstructured', not "
                             f"{plan.pattern}")
        for t in plan.targets:
            check_finite(getattr(t.module, t.param).detach(), "weights", t.name,
                         "the model holds NaN/inf weights before pruning; reload it")

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        scores = {}
        for t in plan.targets:
            s = weight_of(t.module, t.param).detach().abs().float().cpu()
            old = get_mask(t.module, t.param)
            scores[t.name] = s if old is None else s.masked_fill(~old.cpu(), float("-inf"))
        curves = distortion_curves(model, list(plan.targets), scores, _inputs(plan), plan.config.grid)
        already = {t.name: t.numel - int((scores[t.name] > float("-inf")).sum()) for t in plan.targets}
        k = round(sparsity * sum(t.numel for t in plan.targets)) - sum(already.values())
        counts = rd_solve(curves, max(k, 0))
        log.notes.append("rd per-layer sparsity: " + ", ".join(
            f"{t.name}={(counts[t.name] + already[t.name]) / t.numel:.3f}" for t in plan.targets))
        with torch.no_grad():
            for t in plan.targets:
                keep = mask_from_scores(scores[t.name], _UNSTRUCTURED, counts[t.name] + already[t.name])
                set_mask_(t.module, keep, t.param)


register_method("rd", RDConfig)(RDMethod)
