"""Structured pruning of any model: ``prune`` (a new, smaller model) and ``prune_`` (in place, returns a
report).

Channels are grouped by the dependency graph (DepGraph, Fang et al., 2023), scored per group, and the
least important are physically removed, so the model gets fewer parameters and MACs. The graph is
recorded from one forward pass on the example inputs (:mod:`.graph.recorder`), and the pruned copy is run
under a shape check before anything changes (:mod:`.graph.check`): a group whose removal the model cannot
take (a constant channel count in a reshape, a width another tensor must match) is kept, the plan is
made again, and the report lists it. The original is untouched after any failure. On Hugging Face
models, ``what="heads"|"neurons"|"layers"`` calls :func:`~prunekit.structured.transformers.units.prune_transformer_`
(one function per unit), and ``what="channels"`` also writes the new widths into the config so the result reloads
with ``from_pretrained``.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.config import ConfigError
from ..core.deprecation import PrunekitDeprecationWarning, renamed_args
from ..core.fraction import check_fraction
from .config import StructuredConfig
from .graph.groups import Group, find_groups
from .transformers.common import UNIT_IMPORTANCES
from .transformers.config import HFFormat, is_hf, rebuild_mismatches, sync_from_config_, update_config_
from .transformers.units import prune_transformer_
from .graph.importance import ScoreContext, score_groups
from .graph.plan import Planner
from .graph.removal import remove_
from .graph.report import StructuredPruningWarning, StructuredReport, channel_counts, count_macs, count_params
from .graph.trace import build_graph, resolve_ignore

TARGETS = ("channels", "macs")
_UNSET: Any = object()


def _settings(model: nn.Module, sparsity: Any, given: dict[str, Any], config: Any) -> StructuredConfig:
    """One StructuredConfig from a config (object, dict or the positional ``sparsity`` slot) and keywords."""
    if isinstance(sparsity, (StructuredConfig, dict)):
        config, sparsity = sparsity, _UNSET
    base = StructuredConfig() if config is None else (
        config if isinstance(config, StructuredConfig) else StructuredConfig.parse(config))
    fields = {k: v for k, v in given.items() if v is not _UNSET}
    if sparsity is not _UNSET:
        fields["sparsity"] = check_fraction(sparsity, "sparsity", "[0, 1)")
    if "ignore" in fields:
        fields["ignore"] = _ignore_names(model, fields["ignore"])
    if "importance" in fields and not isinstance(fields["importance"], (str, dict)):
        fields["importance"] = fields["importance"].to_dict()
    try:
        return base.replace(**fields) if fields else base
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _ignore_names(model: nn.Module, ignore: Iterable[Any]) -> list[str]:
    if isinstance(ignore, (nn.Module, str)):
        ignore = [ignore]
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in resolve_ignore(model, ignore):
        if id(m) not in names:
            raise ValueError(f"ignore= holds a {type(m).__name__} that is not a module of {type(model).__name__}")
        out.append(names[id(m)])
    return out


def _check_model(model: nn.Module) -> None:
    masked = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if masked:
        raise ValueError(f"{masked[0]!r} carries a pruning mask; call prunekit.finalize_(model) before structured pruning")


def groups(model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module | str] = (),
           engine: str = "record") -> list[Group]:
    """The prunable channel groups of ``model`` (for inspection: each lists its layers and units)."""
    return find_groups(build_graph(model, example_inputs, ignore, engine=engine))


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict, dict, dict]]:
    return [(m, dict(m._parameters), dict(m._buffers), {k: v for k, v in vars(m).items() if not k.startswith("_")})
            for m in model.modules()]


def _restore(snap: list[tuple[nn.Module, dict, dict, dict]]) -> None:
    for m, params, bufs, attrs in snap:
        m._parameters.clear()
        m._parameters.update(params)
        m._buffers.clear()
        m._buffers.update(bufs)
        for k, v in attrs.items():
            setattr(m, k, v)


def _run(model: nn.Module, example_inputs: Any, cfg: StructuredConfig, loss_fn: Callable | None, data: Any,
         verbose: bool) -> StructuredReport:
    start = time.perf_counter()
    _check_model(model)
    hf = is_hf(model)
    imp = cfg.importance.importance
    params_before, macs_before = count_params(model), count_macs(model, example_inputs)
    report = StructuredReport(cfg.what, cfg.sparsity, imp, params_before, params_before, macs_before, macs_before)
    if cfg.what != "channels":
        _prune_unit(model, example_inputs, cfg, data, report)
    else:
        if imp == "activation" and data is None and example_inputs is None:
            raise ValueError("importance='activation' needs data= (or the example inputs)")
        _prune_channels(model, example_inputs, cfg, loss_fn, data, hf, report)
    report.params_after, report.macs_after = count_params(model), count_macs(model, example_inputs)
    report.seconds = time.perf_counter() - start
    _warn(report)
    if verbose:
        print(report)
    return report


def _prune_unit(model: nn.Module, example_inputs: Any, cfg: StructuredConfig, data: Any,
                report: StructuredReport) -> None:
    """Heads, neurons or layers of a transformer: :func:`prune_transformer_` (the example inputs, or the ``data=``
    batches, are its calibration), restored on failure."""
    imp = cfg.importance.importance
    if cfg.what == "layers" and imp != "l2":
        raise ValueError("what='layers' ranks blocks by Block Influence on the example inputs (or data=); "
                         f"importance={imp!r} does not apply: leave it out")
    if cfg.what != "layers" and imp not in UNIT_IMPORTANCES:
        raise ValueError(f"what={cfg.what!r} ranks by {', '.join(UNIT_IMPORTANCES)}, not {imp!r}")
    if cfg.target != "channels" or cfg.allocation != "uniform" or cfg.round_to or cfg.ignore or cfg.engine != "record":
        raise ValueError(f"what={cfg.what!r} keeps the same count in every layer: target, allocation, round_to, ignore "
                         "and engine apply to what='channels' only")
    calibration = _calibration(data, example_inputs) if imp == "activation" or cfg.what == "layers" else None
    options: dict[str, Any] = {} if cfg.what == "layers" else {"importance": imp, "seed": cfg.seed}
    if cfg.what == "heads":
        options["strict"] = cfg.strict  # a result far from the asked fraction is an error
    snap = _snapshot(model)
    try:
        result = prune_transformer_(model, cfg.what, sparsity=cfg.sparsity, calibration=calibration, **options)
    except Exception:
        _restore(snap)
        raise
    report.importance = result.importance
    report.reloadable = result.reloadable
    report.details = result.to_dict()


def _calibration(data: Any, example_inputs: Any) -> Any:
    """One calibration batch from ``data=`` batches (``(inputs, targets)`` pairs give their inputs) or the
    example inputs."""
    batches = list(data) if data is not None else [example_inputs]
    inputs = [b[0] if isinstance(b, (tuple, list)) and len(b) == 2 and data is not None else b for b in batches]
    if len(inputs) == 1:
        return inputs[0]
    return torch.cat([x if isinstance(x, torch.Tensor) else x["input_ids"] for x in inputs])


def _prune_channels(model: nn.Module, example_inputs: Any, cfg: StructuredConfig, loss_fn: Callable | None,
                    data: Any, hf: bool, report: StructuredReport) -> None:
    graph = build_graph(model, example_inputs, cfg.ignore, strict=cfg.strict, engine=cfg.engine)
    ctx = ScoreContext(model, loss_fn=loss_fn, data=data, seed=cfg.seed, example_inputs=example_inputs)
    planner = Planner(model, example_inputs, graph, lambda gs: score_groups(gs, cfg.importance, ctx),
                      round_to=cfg.round_to, global_ranking=cfg.allocation == "global",
                      form=HFFormat(model) if hf else None)
    if cfg.sparsity == 0 or not planner.groups:
        removed: set[int] = set()
    elif cfg.target == "macs":
        removed = planner.plan_macs(cfg.sparsity, report.macs_before)
    else:
        removed = planner.plan(cfg.sparsity)
    snap = _snapshot(model)
    try:
        remove_(model, graph, removed)
        changes = update_config_(model) if hf else {}
    except Exception:
        _restore(snap)
        raise
    total, prunable, gone, reasons = channel_counts(graph, removed, planner.kept_after_check())
    report.channels, report.channels_prunable, report.channels_removed = total, prunable, gone
    report.groups, report.pinned, report.repaired = len(planner.active), reasons, planner.repaired
    report.unknown_ops = dict(graph.unknown_ops)
    report.config_changes = changes
    report.details = {"ops": graph.ops, "checks": planner.checks, "ties": planner.ties, "engine": cfg.engine}
    if hf and changes:
        report.reloadable = not rebuild_mismatches(model)
        synced = sync_from_config_(model)
        if synced:
            report.details["synced_from_config"] = synced


def _warn(report: StructuredReport) -> None:
    msgs = []
    if report.what == "channels" and report.sparsity > 0:
        why = "; ".join(f"{n:,} by {r}" for r, n in report.pinned[:3])
        if not report.channels:
            msgs.append("the model has no inner channels to remove (every channel a weight makes is an output of the "
                        "model or in ignore=)")
        elif report.channels_prunable == 0:
            msgs.append(f"nothing could be pruned: every channel is pinned ({why})")
        elif report.channels_removed_fraction < report.sparsity / 2 or report.macs_removed < report.sparsity / 2:
            because = (f"only {report.prunable_fraction:.1%} are prunable (pinned: {why})" if why else
                       ("nothing was pinned, but the removed channels carry few of the MACs (the rest sits in kept "
                        "output / ignore= layers or in work that does not scale with the channels)"))
            msgs.append(f"removed {report.channels_removed_fraction:.1%} of the channels ({report.macs_removed:.1%} of "
                        f"the MACs) where {report.sparsity:.0%} of the channels was asked: {because}")
    if report.unknown_ops:
        ops = ", ".join(list(report.unknown_ops)[:4])
        msgs.append(f"operations the graph does not know or could not follow pinned their channels: {ops} "
                    "(strict=True makes this an error; ignore=[module] keeps such a module whole)")
    for msg in msgs:
        report.warnings.append(msg)
        warnings.warn(f"structured pruning: {msg}", StructuredPruningWarning, stacklevel=5)


def _keywords(**kw: Any) -> dict[str, Any]:
    return kw


@renamed_args(ratio="sparsity")
def prune_(model: nn.Module, example_inputs: Any, sparsity: Any = _UNSET, importance: Any = _UNSET, *,
           what: str = _UNSET, ignore: Iterable[nn.Module | str] = _UNSET, allocation: str = _UNSET,
           round_to: int | None = _UNSET, target: str = _UNSET, seed: int = _UNSET, strict: bool = _UNSET,
           engine: str = _UNSET, loss_fn: Callable | None = None, data: Iterable | None = None,
           config: StructuredConfig | dict | None = None, global_pruning: bool | None = None,
           verbose: bool = False) -> StructuredReport:
    """Remove ``sparsity`` of the channels of every coupled group of ``model``, in place, and return a
    :class:`StructuredReport` (sizes before/after, how much was prunable, what stayed pinned and why).

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs, run once to
    record the graph. ``importance``: ``l1``, ``l2`` (group magnitude, DepGraph), ``bn_scale`` (Network
    Slimming), ``beta_rank`` (Beta-Rank: filter |w| times output/input std on ``data``), ``taylor`` (Molchanov
    et al. 2019: ``loss_fn(outputs, targets)`` on ``data`` batches of
    ``(inputs, targets)``), ``activation`` (E[x²]·‖W‖² on ``data``) or ``random``; a name, a dict or
    an importance config. ``what``: ``channels`` (every graph group), or for transformers ``heads``
    (whole key/value groups, or query heads under multi-query attention) / ``neurons`` (MLP) / ``layers``
    (blocks by Block Influence on the example inputs or ``data=``). ``ignore``: modules (or names) whose output channels
    are kept. ``allocation="global"`` ranks units across groups; ``round_to`` keeps counts multiples of
    it; ``target="macs"`` makes ``sparsity`` the fraction of MACs removed. ``strict``: an operation the
    graph cannot follow is an error (channels), and so is a head count far from ``sparsity`` (heads).
    ``config``: a :class:`StructuredConfig` (or the third positional argument); keywords override it.
    Parameters are replaced, so build optimizers after."""
    if global_pruning is not None:
        warnings.warn("structured.prune_: global_pruning= is deprecated, use allocation='global'",
                      PrunekitDeprecationWarning, stacklevel=3)
        allocation = "global" if global_pruning else "uniform"
    cfg = _settings(model, sparsity, _keywords(importance=importance, what=what, ignore=ignore, allocation=allocation,
                                               round_to=round_to, target=target, seed=seed, strict=strict,
                                               engine=engine), config)
    return _run(model, example_inputs, cfg, loss_fn, data, verbose)


@renamed_args(ratio="sparsity")
def prune(model: nn.Module, example_inputs: Any, sparsity: Any = _UNSET, importance: Any = _UNSET, *,
          what: str = _UNSET, ignore: Iterable[nn.Module | str] = _UNSET, allocation: str = _UNSET,
          round_to: int | None = _UNSET, target: str = _UNSET, seed: int = _UNSET, strict: bool = _UNSET,
          engine: str = _UNSET, loss_fn: Callable | None = None, data: Iterable | None = None,
          config: StructuredConfig | dict | None = None, global_pruning: bool | None = None,
          verbose: bool = False) -> nn.Module:
    """A new, smaller model: :func:`prune_` applied to a copy (the original is left unchanged). The same
    arguments; warnings say when much less than ``sparsity`` could be removed."""
    if global_pruning is not None:
        warnings.warn("structured.prune: global_pruning= is deprecated, use allocation='global'",
                      PrunekitDeprecationWarning, stacklevel=3)
        allocation = "global" if global_pruning else "uniform"
    cfg = _settings(model, sparsity, _keywords(importance=importance, what=what, ignore=ignore, allocation=allocation,
                                               round_to=round_to, target=target, seed=seed, strict=strict,
                                               engine=engine), config)
    _check_model(model)
    copy_ = copy.deepcopy(model)
    _run(copy_, example_inputs, cfg, loss_fn, data, verbose)
    return copy_
