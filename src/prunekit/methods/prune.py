"""``prune_``: the one verb that prunes a model in place with any registered method."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.allocate import ALLOCATIONS
from ..core.mask import MaskSnapshot, get_mask, set_mask_
from ..core.pattern import Pattern, check_pattern, parse_pattern
from ..core.scope import Scope, select_targets
from ..criteria.base import ScoreContext
from ..calibrate.moe import expert_targets
from .base import METHODS, PrunePlan, WeightJournal


@dataclass
class PruneReport:
    """What a call to :func:`prune_` did: settings, per-layer sparsity, total sparsity and time."""

    method: str
    pattern: str
    allocation: str
    target_sparsity: float
    sparsity: float
    params_in_scope: int
    zeros_in_scope: int
    layers: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        text = (
            f"{self.method} ({self.pattern}, {self.allocation}): {len(self.layers)} tensors, "
            f"sparsity {self.sparsity:.4f} (target {self.target_sparsity:.4f}) over {self.params_in_scope:,} "
            f"weights in scope, {self.seconds:.2f} s"
        )
        if self.skipped:
            shown = ", ".join(list(self.skipped)[:4]) + (" …" if len(self.skipped) > 4 else "")
            text += f"; {len(self.skipped)} left dense ({shown}: {next(iter(self.skipped.values()))})"
        return text


def _resolve_sparsity(sparsity: float | None, pattern: Pattern) -> float:
    fixed = pattern.fixed_sparsity
    if sparsity is None:
        if fixed is None:
            raise ValueError(f"sparsity is required for pattern {pattern}; pass a number in [0, 1)")
        return fixed
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if fixed is not None and abs(sparsity - fixed) > 1e-9:
        raise ValueError(f"pattern {pattern} implies sparsity {fixed}; got sparsity={sparsity} (omit it or match it)")
    return float(sparsity)


def plan_prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    *,
    pattern: str | Pattern = "unstructured",
    allocation: str = "uniform",
    scope: Scope | dict | Sequence[str] | str | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    example_inputs: Any = None,
    calibration: Any = None,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    **options: Any,
):
    """Validate the arguments of :func:`prune_` and return the method and its plan; changes nothing."""
    factory = METHODS.get(method)
    pat = parse_pattern(pattern)
    target = _resolve_sparsity(sparsity, pat)
    if pat.kind != "nm":
        ALLOCATIONS.get(allocation)
    experts = expert_targets(model, scope)
    try:
        targets = select_targets(model, scope)
    except ValueError:
        if not experts:
            raise
        targets = []  # the scope names fused expert weights only
    for t in targets:
        check_pattern(pat, t.matrix_shape, t.name)
    allocation_options = {k: options.pop(k) for k in ("floor", "power", "owl_m", "owl_lambda") if k in options}
    ctx = ScoreContext(data=data, loss_fn=loss_fn, example_inputs=example_inputs, seed=seed,
                       max_batches=max_batches, options={k: options[k] for k in ("temperature",) if k in options})
    plan = PrunePlan(targets, target, pat, allocation, allocation_options, ctx, calibration, progress, options)
    plan.experts = experts
    impl = factory()
    if not getattr(impl, "prunes_experts", False):
        for t in experts:
            plan.skipped[t.name] = (f"fused 3-D expert weights: {method} prunes Linear and Conv weights only "
                                    "(wanda and sparsegpt prune every expert)")
    impl.validate(model, plan)
    return impl, plan


def prune_(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    *,
    pattern: str | Pattern = "unstructured",
    allocation: str = "uniform",
    scope: Scope | dict | Sequence[str] | str | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    example_inputs: Any = None,
    calibration: Any = None,
    iterations: int = 1,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    **options: Any,
) -> PruneReport:
    """Prune ``model`` in place with masks and return a :class:`PruneReport`.

    ``method`` names a registered method (``prunekit.METHODS.names()``); ``sparsity`` is the fraction
    of weights in scope to zero (implied by an N:M ``pattern``); ``allocation`` spreads it over layers
    (uniform, global, global_floor, erk, lamp, owl); ``scope`` picks the tensors. Data-driven criteria take
    ``data`` (batches of ``(inputs, targets)``) and ``loss_fn``; SynFlow takes ``example_inputs``.
    Calibrated methods (``wanda``, ``sparsegpt``) take ``calibration=`` token ids (nsamples, seqlen) and
    prune a transformer block by block (options ``batch_size``, ``device``; SparseGPT's ``blocksize``,
    ``percdamp``; OWL's ``owl_m``, ``owl_lambda``).
    ``iterations`` > 1 prunes in rounds on an exponential schedule (as SynFlow and iterative SNIP do).
    Pruning a pruned model again only adds zeros. Everything is validated before the model changes,
    and a failure part-way puts the masks back as they were.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    start = time.perf_counter()
    impl, plan = plan_prune(
        model, method, sparsity, pattern=pattern, allocation=allocation, scope=scope, data=data,
        loss_fn=loss_fn, example_inputs=example_inputs, calibration=calibration, seed=seed,
        max_batches=max_batches, progress=progress, **options,
    )
    if plan.skipped:
        warnings.warn(f"{method} leaves {len(plan.skipped)} tensors in scope dense: "
                      f"{', '.join(plan.skipped)} ({next(iter(plan.skipped.values()))})", stacklevel=2)
    snapshot = MaskSnapshot(model)
    plan.journal = WeightJournal()
    target = plan.sparsity
    try:
        for r in tqdm(range(1, iterations + 1), desc=f"prune ({method})", disable=not progress or iterations == 1,
                      leave=False):
            plan.sparsity = 1 - (1 - target) ** (r / iterations)
            if hasattr(impl, "apply_"):
                impl.apply_(model, plan)
                continue
            masks = impl.masks(model, plan)
            with torch.no_grad():
                for t in plan.targets:
                    set_mask_(t.module, masks[t.name])
    except BaseException:
        plan.journal.restore()
        snapshot.restore()
        raise
    finally:
        plan.journal.close()
    return _report(method, plan, target, time.perf_counter() - start)


def _report(method: str, plan: PrunePlan, target: float, seconds: float) -> PruneReport:
    layers, total, zeros = {}, 0, 0
    for t in [*plan.targets, *plan.experts]:
        mask = get_mask(t.module, t.param)
        n = t.numel
        z = 0 if mask is None else int(n - mask.sum())
        layers[t.name] = z / n
        total += n
        zeros += z
    alloc = "n/a" if plan.pattern.kind == "nm" else plan.allocation
    return PruneReport(method, str(plan.pattern), alloc, target, zeros / total, total, zeros, layers, seconds,
                       dict(plan.skipped), list(plan.notes))

