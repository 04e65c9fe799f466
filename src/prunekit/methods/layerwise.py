"""What Wanda and SparseGPT share: calibrated, block-by-block pruning of a transformer.

A :class:`BlockwiseMethod` walks the model's blocks with :func:`prunekit.calibrate.walk_blocks_`; in
each block it hooks the target layers, runs the block once over the calibration windows to collect
their input statistics, prunes every target of the block, and lets the engine feed the pruned
outputs to the next block. A non-uniform ``allocation`` (``owl``, ``global``, ...) first takes one
dense pass to score every layer with |W|·‖X‖ (as OWL's code does) and turns the scores into per-layer
sparsities.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..calibrate import InputStats, family_of, find_blocks, walk_blocks_
from ..calibrate.blockwise import BlockInputs, as_batches, run_block
from ..core.allocate import ALLOCATIONS, allocate
from ..core.finite import check_finite
from ..core.inputs import check_token_ids
from ..core.mask import get_mask, set_mask_, weight_of
from ..core.scope import Target, is_transposed
from .base import PrunePlan

ENGINE_OPTIONS = ("batch_size", "device")


def rows_view(module: nn.Module) -> Tensor:
    """The effective (masked) weight as (out, in) float32, a copy."""
    w = getattr(module, "weight").detach()
    return (w.t() if is_transposed(module) else w).float().contiguous().clone()


def write_rows_(module: nn.Module, keep: Tensor, new_weight: Tensor | None = None) -> None:
    """Put a (out, in) keep-mask (and optionally new (out, in) weights) on the module's weight."""
    leaf = weight_of(module)
    if is_transposed(module):
        keep = keep.t()
        new_weight = None if new_weight is None else new_weight.t()
    if new_weight is not None:
        with torch.no_grad():
            leaf.copy_(new_weight.to(leaf.dtype))
    set_mask_(module, keep.contiguous())


def block_targets(plan: PrunePlan, block_name: str) -> list[Target]:
    """The plan's targets that lie inside the block named ``block_name``."""
    return [t for t in plan.targets if t.name.startswith(block_name + ".")]


def wanda_scores(module: nn.Module, col_norms: Tensor, name: str = "?") -> Tensor:
    """Wanda's importance |W_ij|·‖X_j‖₂ as (out, in), checked finite; already-pruned entries get -inf."""
    w = rows_view(module)
    score = w.abs() * col_norms.to(w.device).reshape(1, -1)
    check_finite(score, "wanda scores |W|·‖X‖", name,
                 "the layer's inputs overflow or hold NaN (an earlier layer's outputs are not finite)")
    old = get_mask(module)
    if old is not None:
        old = old.t() if is_transposed(module) else old
        score = score.masked_fill(~old.to(score.device), float("-inf"))
    return score


class BlockwiseMethod:
    """Base of calibrated methods that prune a transformer block by block; subclasses set ``name``,
    ``hessian`` and :meth:`prune_layer`."""

    name = "blockwise"
    hessian = False
    updates_weights = False
    patterns: tuple[str, ...] = ("unstructured", "row", "nm")

    def validate(self, model: nn.Module, plan: PrunePlan) -> None:
        """Check the model family, the calibration data, the pattern and the options before anything changes."""
        family_of(model)
        find_blocks(model)
        if plan.calibration is None:
            raise ValueError(
                f"method {self.name!r} needs calibration=: token ids (nsamples, seqlen), e.g. from "
                "prunekit.datasets.text.calibration_windows(tokenizer, 'pydocs', nsamples=32, seqlen=512)"
            )
        for i, batch in enumerate(as_batches(plan.calibration, 1)):
            if "input_ids" not in batch:
                raise ValueError(f"calibration batch {i} has no 'input_ids' (keys: {sorted(batch)})")
            check_token_ids(batch["input_ids"], model, f"calibration batch {i}")
        for t in plan.targets:
            check_finite(getattr(t.module, t.param).detach(), "weights", t.name,
                         f"the model holds NaN/inf weights before {self.name}; reload it or find where they came from")
        if plan.pattern.kind not in self.patterns:
            raise ValueError(f"method {self.name!r} supports patterns {', '.join(self.patterns)}; got {plan.pattern}")
        if plan.pattern.kind != "nm":
            ALLOCATIONS.get(plan.allocation)
        batch_size = plan.options.get("batch_size", 8)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        known = set(ENGINE_OPTIONS) | set(self.options())
        unknown = set(plan.options) - known
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for method {self.name!r}; known: {sorted(known)}")
        self.check_options(plan.options)

    def options(self) -> dict[str, Any]:
        """The method's own options and their defaults."""
        return {}

    def check_options(self, options: dict[str, Any]) -> None:
        """Validate the method's own options."""

    def prune_layer(self, name: str, module: nn.Module, stats: InputStats, sparsity: float, plan: PrunePlan) -> None:
        """Prune one layer in place from its input statistics."""
        raise NotImplementedError

    def apply_(self, model: nn.Module, plan: PrunePlan) -> None:
        """Prune the model's blocks one after the other, each with its inputs from the pruned blocks before it."""
        block_list_name, _ = find_blocks(model)
        inside = [t for t in plan.targets if t.name.startswith(block_list_name + ".")]
        outside = [t.name for t in plan.targets if t not in inside]
        if outside:
            warnings.warn(f"{self.name} prunes the transformer blocks only; left dense: {', '.join(outside)}",
                          stacklevel=3)
        sparsities = self.layer_sparsities(model, plan, inside)
        engine = {k: plan.options[k] for k in ENGINE_OPTIONS if k in plan.options}
        journal = plan.journal

        def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
            targets = block_targets(plan, block_name)
            if not targets:
                return
            stats = self.collect(block, targets, inputs, engine.get("device"))
            for t in targets:
                if journal is not None and self.updates_weights:
                    journal.record(t.module)
                self.prune_layer(t.name, t.module, stats, sparsities[t.name], plan)

        walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=self.name, **engine)

    def collect(self, block: nn.Module, targets: list[Target], inputs: list[BlockInputs], device: Any) -> InputStats:
        """Run ``block`` over all calibration batches with hooks on ``targets``; return their input statistics."""
        stats = InputStats({t.name: t.module for t in targets}, hessian=self.hessian)
        with stats:
            for s in inputs:
                stats.new_call()
                run_block(block, s, device)
        return stats

    def layer_sparsities(self, model: nn.Module, plan: PrunePlan, targets: list[Target]) -> dict[str, float]:
        """Per-layer sparsity: the plan's sparsity for uniform / N:M, else the allocation on a dense Wanda pass."""
        if plan.pattern.kind == "nm" or plan.allocation == "uniform":
            return {t.name: plan.sparsity for t in targets}
        scores: dict[str, Tensor] = {}
        engine = {k: plan.options[k] for k in ENGINE_OPTIONS if k in plan.options}

        def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
            mine = block_targets(plan, block_name)
            if not mine:
                return
            stats = InputStats({t.name: t.module for t in mine})
            with stats:
                for s in inputs:
                    stats.new_call()
                    run_block(block, s, engine.get("device"))
            for t in mine:
                scores[t.name] = wanda_scores(t.module, stats.col_norms(t.name), t.name).cpu()

        walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=f"{plan.allocation} scores", **engine)
        counts = allocate(scores, plan.sparsity, plan.allocation, **plan.allocation_options)
        return {t.name: counts[t.name] / scores[t.name].numel() for t in targets}
