"""``prune_``: the one verb that prunes a model in place with any registered method."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.deprecation import take_renamed
from ..core.fraction import check_fraction
from ..core.mask import MaskSnapshot, get_mask, set_mask_
from ..core.pattern import Pattern, check_pattern, parse_pattern
from ..core.scope import Target, select_targets
from ..calibrate.moe import expert_targets
from ..criteria.base import ScoreContext
from .base import METHODS, PruneLog, PrunePlan, WeightJournal
from .config import PruneConfig


@dataclass
class PruneReport:
    """What a call to :func:`prune_` did: settings, per-layer sparsity, total sparsity and time.

    ``sparsity`` is over the tensors the method pruned (``params_in_scope`` weights); tensors in scope it
    left dense are listed in ``skipped`` with the reason, and counted in ``params_left_dense`` only."""

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
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    params_left_dense: int = 0

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
            shown = ", ".join(list(self.skipped)[:3]) + (", ..." if len(self.skipped) > 3 else "")
            text += (f"; {len(self.skipped)} tensors ({self.params_left_dense:,} weights) left dense and not counted "
                     f"({shown}; see .skipped)")
        return text


Settings = dict[str, Any]
_UNSET = object()


def method_config(method: "str | PruneConfig" = "magnitude", sparsity: Any = None, **settings: Any) -> PruneConfig:
    """The typed config of a ``prune_`` call: ``method`` names a registered method (or is a config,
    which ``settings`` then override); ``settings`` are the config's fields, checked by the config
    (an unknown one is an error that lists the allowed ones)."""
    take_renamed(settings, {"amount": "sparsity", "ratio": "sparsity", "distribution": "allocation"}, "prune_", 5)
    if "sparsity" in settings:
        if sparsity is not None:
            raise TypeError("prune_: sparsity given twice")
        sparsity = settings.pop("sparsity")
    if sparsity is not None:
        settings["sparsity"] = sparsity
    if isinstance(method, PruneConfig):
        return method.replace(**settings) if settings else method
    if isinstance(method, dict):
        return METHODS.parse_config(method, where="prune_", **settings)  # type: ignore[return-value]
    METHODS.get(method)
    return METHODS.parse_config({"method": method}, where="prune_", **settings)  # type: ignore[return-value]


def _skip_unshapeable(targets: list[Target], pat: Pattern, strict: bool) -> tuple[list[Target], dict[str, str]]:
    """Split the targets into those ``pat`` can tile and those it cannot (left dense, with the reason);
    with ``strict`` the first one that cannot be tiled is an error."""
    kept, skipped = [], {}
    for t in targets:
        try:
            check_pattern(pat, t.matrix_shape, t.name)
        except ValueError as exc:
            if strict or pat.kind not in ("nm", "block"):
                raise ValueError(f"{exc} (strict=True)" if strict else str(exc)) from None
            skipped[t.name] = f"shape {t.matrix_shape} does not tile into {pat}"
            continue
        kept.append(t)
    if not kept:
        raise ValueError(f"pattern {pat} fits none of the {len(targets)} tensors in scope "
                         f"(e.g. {next(iter(skipped))}: {next(iter(skipped.values()))}); pick another pattern or scope")
    return kept, skipped


def plan_prune(
    model: nn.Module,
    method: "str | PruneConfig" = "magnitude",
    sparsity: float | None = None,
    *,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    example_inputs: Any = None,
    calibration: Any = None,
    progress: bool = True,
    **settings: Any,
) -> PrunePlan:
    """Check the arguments of :func:`prune_` and return the immutable :class:`PrunePlan` that
    :func:`apply_plan_` applies; changes nothing."""
    cfg = method_config(method, sparsity, **settings)
    factory = METHODS.get(cfg.method)
    pat = parse_pattern(cfg.pattern)
    cfg.target_sparsity()
    scope = None if cfg.scope is None else cfg.scope.to_scope()
    experts = expert_targets(model, scope)
    try:
        targets = select_targets(model, scope)
    except ValueError:
        if not experts:
            raise
        targets = []  # the scope names fused expert weights only
    targets, skipped = _skip_unshapeable(targets, pat, cfg.strict) if targets else ([], {})
    if skipped:
        warnings.warn(f"pattern {pat}: {len(skipped)} of {len(targets) + len(skipped)} tensors in scope cannot take "
                      f"it and stay dense ({', '.join(list(skipped)[:3])}{', ...' if len(skipped) > 3 else ''}); "
                      "see PruneReport.skipped, or pass strict=True to make this an error", stacklevel=3)
    impl = factory()
    if experts and not impl.prunes_experts:
        for t in experts:
            skipped[t.name] = (f"fused 3-D expert weights: {cfg.method} prunes Linear and Conv weights only "
                               "(wanda and sparsegpt prune every expert)")
        warnings.warn(f"{cfg.method} leaves {len(experts)} tensors in scope dense: the fused 3-D expert weights "
                      f"({experts[0].name}, ...); wanda and sparsegpt prune them. See PruneReport.skipped",
                      stacklevel=3)
    ctx = ScoreContext(data=data, loss_fn=loss_fn, example_inputs=example_inputs, seed=cfg.seed,
                       max_batches=cfg.max_batches, config=cfg)
    plan = PrunePlan(impl, cfg, tuple(targets), pat, ctx, calibration, progress, tuple(experts),
                     MappingProxyType(skipped))
    impl.validate(model, plan)
    return plan


def apply_plan_(model: nn.Module, plan: PrunePlan, sparsity: float | None = None) -> PruneReport:
    """Prune ``model`` in place as ``plan`` says, up to ``sparsity`` (default: the plan's target), in the
    config's ``iterations`` rounds, and return a :class:`PruneReport`. The plan is not changed, so one plan
    serves a whole schedule (``apply_plan_(model, plan, s)`` for a rising ``s``). A failure part-way (the
    report included) puts the masks and any rewritten weights back as they were."""
    start = time.perf_counter()
    target = plan.sparsity if sparsity is None else check_fraction(sparsity, "sparsity")
    fixed = plan.pattern.fixed_sparsity
    if fixed is not None and abs(target - fixed) > 1e-9:
        raise ValueError(f"pattern {plan.pattern} implies sparsity {fixed}; got sparsity={sparsity}")
    iterations = plan.config.iterations
    snapshot = MaskSnapshot(model)
    log = PruneLog(journal=WeightJournal(), skipped=dict(plan.skipped))
    try:
        for r in tqdm(range(1, iterations + 1), desc=f"prune ({plan.config.method})",
                      disable=not plan.progress or iterations == 1, leave=False):
            plan.method.apply_(model, plan, 1 - (1 - target) ** (r / iterations), log)
        return _report(model, plan, log, target, time.perf_counter() - start)
    except BaseException:
        log.journal.restore()
        snapshot.restore()
        raise
    finally:
        log.journal.close()


def prune_(
    model: nn.Module,
    method: "str | PruneConfig" = "magnitude",
    sparsity: float | None = None,
    *,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    example_inputs: Any = None,
    calibration: Any = None,
    progress: bool = True,
    **settings: Any,
) -> PruneReport:
    """Prune ``model`` in place with masks and return a :class:`PruneReport`: :func:`plan_prune`, then
    :func:`apply_plan_`.

    ``method`` names a registered method (``prunekit.METHODS.names()``) or is its typed config
    (``prunekit.methods``: ``WandaConfig(sparsity=0.5)``); ``prune_(model, cfg)`` and
    ``prune_(model, "wanda", 0.5, ...)`` are the same call. ``sparsity`` is the fraction of weights in
    scope to zero (implied by an N:M ``pattern``). ``settings`` are the config's fields: ``pattern``
    (unstructured, row, N:M, block:RxC; layers an N:M or block pattern cannot tile stay dense and are
    listed in ``report.skipped``, or raise with ``strict=True``), ``allocation`` (uniform, global,
    global_floor, erk, lamp, owl) and its options (``floor``, ``power``, ``owl_m``, ``owl_lambda``),
    ``scope``, ``iterations`` (> 1 prunes in rounds on an exponential schedule, as SynFlow does),
    ``seed``, ``max_batches``, and the method's own options (Wanda/SparseGPT ``batch_size``,
    ``device``; SparseGPT ``blocksize``, ``percdamp``; GraSP ``temperature``). An unknown setting is
    an error that lists the allowed ones.
    Data-driven criteria take ``data`` (batches of ``(inputs, targets)``) and ``loss_fn(outputs,
    targets)``; SynFlow takes ``example_inputs``; calibrated methods take ``calibration=`` token ids
    (nsamples, seqlen) and prune a transformer block by block. Pruning a pruned model again only adds
    zeros. Everything is validated before the model changes, and a failure part-way (the report
    included) puts the masks and any rewritten weights back as they were.
    """
    start = time.perf_counter()
    plan = plan_prune(model, method, sparsity, data=data, loss_fn=loss_fn, example_inputs=example_inputs,
                      calibration=calibration, progress=progress, **settings)
    report = apply_plan_(model, plan)
    report.seconds = time.perf_counter() - start
    return report


def _numel(model: nn.Module, name: str) -> int:
    """The size of the tensor a report names: a module's weight, or ``owner.param`` (fused experts)."""
    modules = dict(model.named_modules())
    owner, param = (name, "weight") if name in modules else name.rpartition(".")[::2]
    return Target(name, modules[owner], param).numel


def _report(model: nn.Module, plan: PrunePlan, log: PruneLog, target: float, seconds: float) -> PruneReport:
    layers, total, zeros = {}, 0, 0
    dense = sum(_numel(model, name) for name in log.skipped)  # listed with the reason, not counted in the sparsity
    for t in [*plan.targets, *plan.experts]:
        if t.name in log.skipped:
            continue
        mask = get_mask(t.module, t.param)
        n = t.numel
        z = 0 if mask is None else int(n - mask.sum())
        layers[t.name] = z / n
        total += n
        zeros += z
    if total == 0:
        raise ValueError(f"{plan.config.method} pruned none of the tensors in scope (each is listed with the "
                         f"reason: {'; '.join(f'{k}: {v}' for k, v in list(log.skipped.items())[:3])}); widen "
                         "the scope or use method='magnitude'")
    alloc = "n/a" if plan.pattern.kind == "nm" else plan.allocation
    config = plan.config.to_dict()
    if plan.config.sparsity is not None:
        config["sparsity"] = target  # the sparsity this application reached for (a schedule's step)
    return PruneReport(plan.config.method, str(plan.pattern), alloc, target, zeros / total, total, zeros, layers,
                       seconds, skipped=dict(log.skipped), config=config, notes=list(log.notes),
                       params_left_dense=dense)
