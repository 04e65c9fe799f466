"""What Wanda and SparseGPT share: calibrated, block-by-block pruning of a transformer.

A :class:`BlockwiseMethod` walks the model's blocks with :func:`prunekit.calibrate.walk_blocks_`; in
each block it hooks the target layers, runs the block once over the calibration windows to collect
their input statistics, prunes every target of the block, and lets the engine feed the pruned
outputs to the next block. A non-uniform ``allocation`` (``owl``, ``global``, ...) first takes one
dense pass to score every layer with |W|·‖X‖ (as OWL's code does) and turns the scores into per-layer
sparsities.

A round's amount for one target is a :class:`Budget`: the round's sparsity for uniform allocation and
N:M, or the exact count of entries the allocation gave the target (never turned into a fraction and
back). A subclass implements :meth:`BlockwiseMethod.prune_matrix` (one (out, in) weight, its input
statistics and its budget → keep-mask and, optionally, new weights); the base class applies it to every Linear target
(:meth:`prune_layer`) and to every expert of a fused MoE parameter (:meth:`prune_experts`), each
expert calibrated on the tokens routed to it. Targets outside the blocks are left dense and reported.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..calibrate import InputStats, calibration_batches, find_blocks, walk_blocks_
from ..calibrate.blockwise import BlockInputs, run_block
from ..calibrate.moe import FusedExperts, as_fused_experts
from ..calibrate.onepass import memory_budget, one_pass_bytes, one_pass_possible, walk_one_pass_, walk_staged_
from ..core.allocate import ALLOCATIONS, allocate
from ..core.finite import check_finite
from ..core.inputs import check_token_ids
from ..core.mask import PackedMasks, get_mask, set_mask_, weight_of
from ..core.pattern import check_pattern
from ..core.scope import Target, is_transposed
from ..infra.machine import release_freed_memory
from .base import PruneLog, PrunePlan


@dataclass(frozen=True)
class Budget:
    """How much of one target a round prunes: ``sparsity`` (a fraction), and, where an allocation spread the
    round over layers, the exact ``count`` of the target's ``numel`` entries it gave this one."""

    sparsity: float
    count: int | None = None
    numel: int | None = None

    @classmethod
    def of_count(cls, count: int, numel: int) -> "Budget":
        """The budget of a target given ``count`` of its ``numel`` entries."""
        return cls(count / numel if numel else 0.0, count, numel)

    def prune_count(self, numel: int) -> int:
        """How many of ``numel`` entries to prune: the allocated count for the whole target, else the fraction
        of ``numel`` (one expert of a fused parameter, or a uniform round)."""
        if self.count is not None and numel == self.numel:
            return self.count
        return round(self.sparsity * numel)


def engine_options(plan: PrunePlan) -> dict[str, Any]:
    """The block engine's settings from the plan's config (``batch_size``, ``device``)."""
    return {"batch_size": plan.config.batch_size, "device": plan.config.device}


def rows_view(module: nn.Module) -> Tensor:
    """The effective (masked) weight as (out, in) float32, a copy."""
    w = getattr(module, "weight").detach()
    return (w.t() if is_transposed(module) else w).float().contiguous().clone()


def rows_mask(module: nn.Module) -> Tensor | None:
    """The module's keep-mask as (out, in), or None."""
    old = get_mask(module)
    if old is None:
        return None
    return old.t() if is_transposed(module) else old


def write_rows_weight_(module: nn.Module, new_weight: Tensor) -> None:
    """Copy a new (out, in) weight into the module's (dense, leaf) weight, mask untouched."""
    leaf = weight_of(module)
    with torch.no_grad():
        leaf.copy_((new_weight.t() if is_transposed(module) else new_weight).to(leaf.dtype))


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
    """The plan's targets (Linear layers and fused expert parameters) inside the block ``block_name``."""
    return [t for t in [*plan.targets, *plan.experts] if t.name.startswith(block_name + ".")]


def wanda_scores(module: nn.Module, col_norms: Tensor, name: str = "?") -> Tensor:
    """Wanda's importance |W_ij|·‖X_j‖₂ as (out, in), checked finite; already-pruned entries get -inf."""
    return wanda_matrix_scores(rows_view(module), col_norms, rows_mask(module), name)


def wanda_matrix_scores(w: Tensor, col_norms: Tensor, keep: Tensor | None = None, name: str = "?") -> Tensor:
    """|W_ij|·‖X_j‖₂ of an (out, in) weight, checked finite; entries outside ``keep`` (already pruned) get -inf."""
    score = w.abs() * col_norms.to(w.device, w.dtype).reshape(1, -1)
    check_finite(score, "wanda scores |W|·‖X‖", name,
                 "the layer's inputs overflow or hold NaN (an earlier layer's outputs are not finite)")
    if keep is not None:
        score = score.masked_fill(~keep.to(score.device), float("-inf"))
    return score


def _fused_of(target: Target) -> FusedExperts:
    fused = as_fused_experts(target.name.rpartition(".")[0], target.module)
    assert fused is not None, target.name
    return fused


class BlockwiseMethod:
    """Base of calibrated methods that prune a transformer block by block; subclasses set ``name``,
    ``hessian`` and :meth:`prune_matrix` (or override :meth:`prune_layer`)."""

    name = "blockwise"
    hessian = False  # whether prune_matrix reads the Gram matrix X·Xᵀ (else the column norms only)
    updates_weights = False
    prunes_experts = True
    patterns: tuple[str, ...] = ("unstructured", "row", "nm")

    def validate(self, model: nn.Module, plan: PrunePlan) -> None:
        """Check the blocks, the calibration data, the pattern and the options before anything changes."""
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder model ({model.config.model_type}); the block-by-block "
                f"engine of {self.name!r} walks one stack of blocks fed by the model's own forward. Use "
                "method='magnitude', which needs no calibration")
        find_blocks(model)
        if plan.calibration is None:
            raise ValueError(
                f"method {self.name!r} needs calibration=: token ids (nsamples, seqlen), e.g. from "
                "prunekit.datasets.text.calibration_windows(tokenizer, 'pydocs', nsamples=32, seqlen=512)"
            )
        for i, batch in enumerate(calibration_batches(plan.calibration, 1, tokens=True)):
            if "input_ids" not in batch:
                raise ValueError(f"calibration batch {i} has no 'input_ids' (keys: {sorted(batch)})")
            check_token_ids(batch["input_ids"], model, f"calibration batch {i}")
        for t in [*plan.targets, *plan.experts]:
            check_finite(getattr(t.module, t.param).detach(), "weights", t.name,
                         f"the model holds NaN/inf weights before {self.name}; reload it or find where they came from")
        if plan.pattern.kind not in self.patterns:
            raise ValueError(f"method {self.name!r} supports patterns {', '.join(self.patterns)}; got {plan.pattern}")
        if plan.pattern.kind != "nm":
            ALLOCATIONS.get(plan.allocation)
        for t in plan.experts:
            fused = _fused_of(t)
            check_pattern(plan.pattern, tuple(fused.matrix(t.param, 0).shape), fused.key(t.param, 0))

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: InputStats, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, Tensor | None]:
        """Prune one (out, in) float32 weight ``w`` whose input statistics are ``stats[key]`` by ``budget``;
        ``keep_old`` marks entries still alive. Returns the (out, in) keep-mask and the new weight (None:
        unchanged)."""
        raise NotImplementedError

    def prune_layer(self, name: str, module: nn.Module, stats: InputStats, budget: Budget, plan: PrunePlan) -> None:
        """Prune one Linear-like layer in place from its input statistics."""
        keep_old = rows_mask(module)
        keep, new_w = self.prune_matrix(name, rows_view(module), keep_old, stats, budget, plan)
        if keep_old is not None:
            keep = keep & keep_old.to(keep.device)
        self.write_layer_(module, keep, new_w, keep_old is None)

    def write_layer_(self, module: nn.Module, keep: Tensor, new_w: Tensor | None, fresh: bool) -> None:
        """Write a layer's new weight and keep-mask. A method that rewrites its weights writes the zeros into
        them and, for a layer with no mask yet (``fresh``), holds the mask packed until the walk ends
        (:meth:`flush_masks_`): the rest of the walk sees the same weights, and the masks stay out of its
        peak memory."""
        pending = getattr(self, "_packed", None)
        if pending is None or not fresh or new_w is None:
            write_rows_(module, keep, new_w)
            return
        # zeros by a product with the mask, as the mask's own forward makes them (masked_fill_'s bool path costs
        # ~10× more on CPU)
        write_rows_weight_(module, new_w.mul_(keep.to(new_w.device)))
        pending.add(module, keep.t() if is_transposed(module) else keep)

    @contextlib.contextmanager
    def packed_masks(self) -> Iterator[None]:
        """While a walk runs, hold the masks of a weight-rewriting method packed (see :meth:`write_layer_`);
        put them on their layers when it ends, drop them when it fails (the journal puts the weights back).
        Re-entrant: an inner walk leaves the masks to the outer one."""
        if getattr(self, "_packed", None) is not None or not self.updates_weights:
            yield
            return
        self._packed = PackedMasks()
        try:
            yield
            pending = self._packed
        finally:
            self._packed = None
        pending.apply_()

    def prune_experts(self, target: Target, stats: InputStats, budget: Budget, plan: PrunePlan) -> None:
        """Prune every expert of a fused 3-D expert parameter, each from the tokens routed to it."""
        fused = _fused_of(target)
        leaf = weight_of(target.module, target.param)
        old = get_mask(target.module, target.param)
        keeps = []
        for e in range(fused.num_experts):
            key = fused.key(target.param, e)
            keep_old = None if old is None else (old[e].t() if fused.transposed else old[e])
            if not stats.seen(key):
                self._uncalibrated.append(key)
            keep, new_w = self.prune_matrix(key, fused.matrix(target.param, e), keep_old, stats, budget, plan)
            if keep_old is not None:
                keep = keep & keep_old.to(keep.device)
            if new_w is not None:
                with torch.no_grad():
                    leaf[e].copy_((new_w.t() if fused.transposed else new_w).to(leaf.dtype))
            keeps.append(keep.t() if fused.transposed else keep)
        set_mask_(target.module, torch.stack(keeps).contiguous(), name=target.param)

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Prune the model's blocks one after the other, each with its inputs from the pruned blocks before it."""
        self.two_pass_(model, plan, sparsity, log)

    def inside_blocks(self, model: nn.Module, plan: PrunePlan, log: PruneLog) -> list[Target]:
        """The Linear-like targets (2-D weights) and fused experts inside the transformer blocks; the others
        (outside the blocks, or convolutions) are listed in ``log.skipped``, with a warning."""
        blocks = find_blocks(model)
        inside, outside, convs = [], [], []
        for t in [*plan.targets, *plan.experts]:
            if not blocks.contains(t.name):
                outside.append(t.name)
                log.skipped[t.name] = (f"outside the transformer blocks ({blocks.name}.*): {self.name} prunes "
                                       "blocks only")
            elif t.param == "weight" and len(t.shape) != 2:
                convs.append(t.name)
                log.skipped[t.name] = (f"a convolution ({type(t.module).__name__}): {self.name} prunes Linear "
                                       "layers (2-D weights) from their input statistics only")
            else:
                inside.append(t)
        if outside:
            warnings.warn(f"{self.name} prunes the transformer blocks only; left dense: {', '.join(outside)}",
                          stacklevel=4)
        if convs:
            warnings.warn(f"{self.name} prunes Linear layers only; convolutions left dense: {', '.join(convs)}",
                          stacklevel=4)
        return inside

    def skip_uncalled(self, targets: list[Target], called: Any, log: PruneLog, block_name: str) -> list[Target]:
        """``targets`` less the Linear layers the block's forward never called as modules (``called(name)``
        false: their weight is used directly, as Mamba's ``dt_proj``, or no calibration token reached them):
        those have no activations to be scored by, so they stay dense and are listed in ``log.skipped``."""
        uncalled = [t for t in targets if t.param == "weight" and not called(t.name)]
        for t in uncalled:
            log.skipped[t.name] = (f"{block_name}'s forward never called it as a module on the calibration data "
                                   f"(its weight is used directly, or no token reached it): {self.name} has no "
                                   "activations to score it by")
        if uncalled:
            warnings.warn(f"{self.name}: {block_name}'s forward never called {', '.join(t.name for t in uncalled)}; "
                          "left dense (see PruneReport.skipped)", stacklevel=5)
        return [t for t in targets if t not in uncalled]

    def two_pass_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """The usual loop: per block, one pass to collect every target's input statistics on the block as it
        is, the targets pruned, and one pass of the pruned block to feed the next."""
        with self.packed_masks():
            return self._two_pass_body(model, plan, sparsity, log)

    def _two_pass_body(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        inside = self.inside_blocks(model, plan, log)
        names = {t.name for t in inside}
        budgets = self.layer_budgets(model, plan, inside, sparsity)
        engine = engine_options(plan)
        self._uncalibrated: list[str] = []

        def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
            targets = [t for t in block_targets(plan, block_name) if t.name in names]
            if not targets:
                return
            stats = self.collect(block, targets, inputs, engine["device"])
            for t in self.skip_uncalled(targets, stats.seen, log, block_name):
                if self.updates_weights:
                    log.record(t.module, t.param)
                if t.param == "weight":
                    self.prune_layer(t.name, t.module, stats, budgets[t.name], plan)
                else:
                    self.prune_experts(t, stats, budgets[t.name], plan)
                release_freed_memory()  # the layer's temporaries: the next layer's would not reuse them all

        walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=self.name, **engine)
        if self._uncalibrated:
            note = (f"{len(self._uncalibrated)} expert matrices received no calibration token (the router sent "
                    f"none to them) and were pruned by weight magnitude: {', '.join(self._uncalibrated[:6])}"
                    + (" …" if len(self._uncalibrated) > 6 else ""))
            log.notes.append(note)
            warnings.warn(note, stacklevel=4)

    def begin_block(self) -> None:
        """Called before the targets of a new set of statistics are pruned (a method may drop caches)."""

    def sequential_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Dispatch on the config's ``sequential``: ``"block"`` runs :meth:`two_pass_` (every layer of a block on
        the dense block); ``"layer"`` prunes every layer on the inputs its pruned predecessors give it, in one
        pass per block when the estimate fits the budget and the windows share one length, else in staged
        passes (the same result; :mod:`prunekit.calibrate.onepass`). Fused MoE experts take the usual loop (with
        a warning that the order changed)."""
        with self.packed_masks():
            return self._sequential_body(model, plan, sparsity, log)

    def _sequential_body(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        cfg = plan.config
        if cfg.sequential != "layer":
            return self.two_pass_(model, plan, sparsity, log)
        if plan.experts:
            warnings.warn(f"{self.name} sequential='layer' does not cover fused MoE expert weights yet; this model "
                          "is pruned with sequential='block' (every layer of a block on the dense block's inputs)",
                          stacklevel=4)
            return self.two_pass_(model, plan, sparsity, log)
        inside = self.inside_blocks(model, plan, log)
        names = {t.name for t in inside}
        budgets = self.layer_budgets(model, plan, inside, sparsity)
        current: list[Any] = [None]

        def prune(t: Target, stats: InputStats) -> None:
            if stats is not current[0]:
                self.begin_block()
                current[0] = stats
            if self.updates_weights:
                log.record(t.module)
            self.prune_layer(t.name, t.module, stats, budgets[t.name], plan)
            release_freed_memory()  # the layer's temporaries: the next layer's would not reuse them all

        def uncalled(targets: list[Target], block_name: str) -> None:
            self.skip_uncalled(targets, lambda name: False, log, block_name)

        walk = dict(targets_of=lambda b: [t for t in block_targets(plan, b) if t.name in names], prune=prune,
                    uncalled=uncalled, hessian=self.hessian, device=cfg.device, progress=plan.progress)
        budget = int(cfg.one_pass_max_gb * 1e9) if cfg.one_pass_max_gb is not None else memory_budget(cfg.device)
        need = one_pass_bytes(model, plan.calibration)
        possible = one_pass_possible(plan.calibration)
        if possible and need <= budget:
            return walk_one_pass_(model, plan.calibration, batch_size=cfg.batch_size, desc=f"{self.name} (one pass)",
                                  **walk)
        why = ("the calibration windows differ in length" if not possible else
               f"one pass over all windows needs about {need / 1e9:.1f} GB of activations, over the budget of "
               f"{budget / 1e9:.1f} GB (one_pass_max_gb)")
        warnings.warn(f"{self.name} sequential='layer': {why}; pruning each block in staged passes of "
                      f"{cfg.batch_size} windows instead (the same result, about two more forwards per block)",
                      stacklevel=4)
        return walk_staged_(model, plan.calibration, batch_size=cfg.batch_size, desc=f"{self.name} (staged)", **walk)

    def collect(self, block: nn.Module, targets: list[Target], inputs: list[BlockInputs], device: Any,
                hessian: bool | None = None) -> InputStats:
        """Run ``block`` over all calibration batches with hooks on ``targets``; return their input statistics."""
        linears = {t.name: t.module for t in targets if t.param == "weight"}
        experts = {}
        for t in targets:
            if t.param != "weight":
                fused = _fused_of(t)
                experts[fused.name] = fused
        stats = InputStats(linears, hessian=self.hessian if hessian is None else hessian, experts=experts)
        with stats:
            for s in inputs:
                stats.new_call()
                run_block(block, s, device)
        return stats

    def layer_budgets(self, model: nn.Module, plan: PrunePlan, targets: list[Target],
                      sparsity: float) -> dict[str, Budget]:
        """Per-target budget of a round at ``sparsity``: that sparsity everywhere for uniform / N:M, else the
        counts the plan's allocation gives on a dense Wanda pass."""
        if plan.pattern.kind == "nm" or plan.allocation == "uniform":
            return {t.name: Budget(sparsity) for t in targets}
        scores: dict[str, Tensor] = {}
        engine = engine_options(plan)
        names = {t.name for t in targets}

        def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
            mine = [t for t in block_targets(plan, block_name) if t.name in names]
            if not mine:
                return
            stats = self.collect(block, mine, inputs, engine["device"], hessian=False)
            for t in mine:
                if t.param == "weight" and not stats.seen(t.name):
                    continue  # never called: skipped by the pruning pass, so not in the allocation
                if t.param == "weight":
                    scores[t.name] = wanda_scores(t.module, stats.col_norms(t.name), t.name).cpu()
                    continue
                fused, old = _fused_of(t), get_mask(t.module, t.param)
                per_expert = []
                for e in range(fused.num_experts):
                    key = fused.key(t.param, e)
                    w = fused.matrix(t.param, e)
                    norms = stats.col_norms(key) if stats.seen(key) else torch.ones(w.shape[1])
                    keep = None if old is None else (old[e].t() if fused.transposed else old[e])
                    per_expert.append(wanda_matrix_scores(w, norms, keep, key).cpu())
                scores[t.name] = torch.stack(per_expert)

        walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=f"{plan.allocation} scores", **engine)
        counts = allocate(scores, sparsity, plan.allocation, **plan.allocation_options)
        return {t.name: Budget.of_count(counts[t.name], scores[t.name].numel()) for t in targets if t.name in scores}
