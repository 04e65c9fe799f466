"""The shrink stage: cut a decoder to a smaller dense shape under a budget (:mod:`prunekit.shrink`), then,
optionally, distil it back from the unpruned model — what ``prunekit shrink`` does, as a stage a recipe lists
before an export:

    - stage: shrink
      target: params=0.6          # or memory=F, speed=S (measured, per-layer search)
      search: auto                # uniform | per-layer | auto (per-layer for speed=)
      axes: [heads, neurons, depth]
      distill: {steps: 20, batch_size: 2, seqlen: 128, lr: 2.0e-4, ce_weight: 0.0, text: pydocs}
    - stage: export
      to: gguf
      quant: q8_0
      out: shrunk-q8_0.gguf

The distillation block takes :class:`prunekit.shrink.distill.DistillConfig`'s recovery fields: ``objective``
(``kd``: logit distillation; ``next_token``: plain fine-tuning on the text, no teacher), ``train`` (``full``, or
``lora`` with ``lora_rank``: adapters merged at the end), ``ce_weight`` and ``hidden_weight``. ``schedule: adapt``
with ``rounds: N`` runs Adapt-Pruner's cut-train-repeat schedule (:func:`prunekit.shrink.schedule.adapt_shrink_`:
per-layer cuts, the distillation's steps split over the rounds) instead of one cut then one distillation.

Checked before any stage changes the model: the family and its layout, the target (an unreachable one names
the most the search reaches), the axes, the calibration windows, and for distillation that text is there
(``distill.text``, else the calibration source of a calibrate stage) with a tokenizer to read it, that a
hidden-state loss is not asked of a model whose residual width is cut, and that Adapt-Pruner's schedule has a
per-layer search, a params=/memory= target and a training step per round. The shape is planned on the model as
loaded, so the stage must come before any other stage that changes the model.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from ..core.config import Config
from ..shrink.distill import DistillConfig
from ..shrink.search import DEFAULT_CANDIDATES
from .base import StageKind, StageResult, Workspace, register_stage

SEARCHES = ("auto", "uniform", "per-layer")
SCHEDULES = ("one-shot", "adapt")
PLAN = "shrink plan"  # ws.state: what the check found (the per-layer budget with its latency table)


class ShrinkDistillConfig(DistillConfig):
    """Logit distillation after the cut (:class:`prunekit.shrink.distill.DistillConfig`'s fields) on ``text``
    (pydocs, a text file or a folder: its calibration split; default the calibration stage's source). ``seed``
    (the text's shuffle) is the run's when None."""

    steps: int = Field(20, ge=1)
    seed: int | None = None  # type: ignore[assignment]
    text: str | None = None


class ShrinkConfig(Config):
    """Shrink to ``target`` (``params=F``, ``memory=F``, ``speed=S``) with ``search`` (``uniform``: one shape
    for every block, the best of ``candidates`` grid shapes by calibration loss; ``per-layer``: each block its
    own widths, chosen by ``optimizer``, options scored on ``score_windows`` calibration windows; ``auto``:
    per-layer for speed= and for the adapt schedule, else uniform) along ``axes`` (default: heads, neurons, hidden,
    depth for uniform; heads, neurons per layer), units ranked by ``importance``; speed= is timed in
    ``speed_engine`` (transformers, or llama.cpp at GGUF type ``speed_quant``, q8_0 by default); cut widths are
    multiples of ``width_multiple`` (None: 256 when ``speed_quant`` is a K-quant, else 32;
    :func:`prunekit.shrink.search.resolve_width_multiple`); then ``distill``
    (None: no recovery). ``schedule``: ``one-shot`` (one cut, then the distillation) or ``adapt`` (Adapt-Pruner:
    ``rounds`` per-layer cuts, each followed by its share of the distillation's steps; ``rounds`` None: the
    default of :class:`prunekit.shrink.schedule.AdaptConfig`)."""

    stage: Literal["shrink"] = "shrink"
    target: str = "params=0.6"
    search: Literal[SEARCHES] = "auto"
    axes: tuple[str, ...] | None = None
    importance: Literal["activation", "magnitude"] = "activation"
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1)
    optimizer: Literal["milp", "greedy"] = "milp"
    score_windows: int = Field(4, ge=1)
    speed_engine: Literal["transformers", "llama.cpp"] = "transformers"
    speed_quant: str | None = None
    width_multiple: int | None = None
    distill: ShrinkDistillConfig | None = None
    schedule: Literal[SCHEDULES] = "one-shot"
    rounds: int | None = Field(None, ge=1)


def resolved(cfg: ShrinkConfig) -> tuple[Any, str, tuple[str, ...]]:
    """The parsed target, the search (``auto`` resolved) and the axes (defaults filled in, validated); raises
    ValueError on a combination that cannot run. Needs no model."""
    from ..shrink.budget import parse_target
    from ..shrink.perlayer import check_per_layer_axes
    from ..shrink.search import AXES, check_axes
    from ..shrink.search_layers import DEFAULT_PER_LAYER_AXES

    target = parse_target(cfg.target)
    adapt = cfg.schedule == "adapt"
    search = cfg.search if cfg.search != "auto" else ("per-layer" if target.kind == "speed" or adapt else "uniform")
    if cfg.rounds is not None and not adapt:
        raise ValueError("shrink's rounds count the cuts of schedule adapt; set schedule adapt or drop rounds")
    if adapt:
        if target.kind == "speed":
            raise ValueError("shrink's schedule adapt cuts to params= or memory= (a count fixed against the original "
                             "model); speed= is measured on the model as it is: use schedule one-shot")
        if search != "per-layer":
            raise ValueError("shrink's schedule adapt cuts per layer in every round: use search per-layer (or auto)")
        rounds = adapt_config(cfg, ()).rounds
        if cfg.distill is None or cfg.distill.steps < rounds:
            steps = "no distill block" if cfg.distill is None else f"distill.steps {cfg.distill.steps}"
            raise ValueError(f"shrink's schedule adapt trains after each of its {rounds} cuts, and there is {steps}: "
                             f"give a distill block with at least {rounds} steps (one per round), or fewer rounds")
    if target.kind != "speed" and (cfg.speed_engine != "transformers" or cfg.speed_quant is not None):
        raise ValueError(f"shrink's speed_engine and speed_quant time the speed= target; target {target} counts "
                         "parameters")
    if cfg.speed_quant is not None and cfg.speed_engine != "llama.cpp":
        raise ValueError("shrink's speed_quant is the GGUF type timed in llama.cpp: set speed_engine llama.cpp")
    if search == "uniform" and target.kind == "speed":
        raise ValueError("shrink target speed= is a measured latency, searched per layer: use search per-layer "
                         "(or auto)")
    if search == "per-layer":
        axes = check_per_layer_axes(cfg.axes if cfg.axes is not None else DEFAULT_PER_LAYER_AXES)
    else:
        axes = check_axes(cfg.axes if cfg.axes is not None else AXES)
    return target, search, axes


def width_multiple(cfg: ShrinkConfig) -> int:
    """The width multiple the search uses (``width_multiple``, else 256 for a K-quant ``speed_quant``, else 32)."""
    from ..shrink.search import resolve_width_multiple

    return resolve_width_multiple(cfg.width_multiple, [cfg.speed_quant], "shrink's width_multiple")


def adapt_config(cfg: ShrinkConfig, axes: tuple[str, ...]) -> Any:
    """Adapt-Pruner's settings (:class:`prunekit.shrink.schedule.AdaptConfig`) for this stage: its rounds (the
    AdaptConfig default when None), per-layer ``axes``, optimizer, scoring windows and width multiple."""
    from ..shrink.schedule import AdaptConfig

    fields: dict[str, Any] = {"axes": list(axes), "optimizer": cfg.optimizer, "score_windows": cfg.score_windows,
                              "width_multiple": width_multiple(cfg)}
    if cfg.rounds is not None:
        fields["rounds"] = cfg.rounds
    return AdaptConfig.parse(fields)


def check_recovery(d: DistillConfig, axes: tuple[str, ...], names: Mapping[str, str]) -> None:
    """Refuse recovery settings that cannot run or would be ignored, before anything changes: a hidden-state loss
    where the residual width is cut, a cross-entropy weight added to plain next-token training. ``names``
    words the fields (``distill.hidden_weight`` in a recipe, ``--kd-hidden-weight`` on the command line)."""
    if d.hidden_weight > 0 and "hidden" in axes:
        raise ValueError(f"{names['hidden_weight']} compares residual streams, which {names['hidden']} cuts: "
                         f"{names['fix_hidden']}")
    if d.ce_weight > 0 and d.objective == "next_token":
        raise ValueError(f"{names['ce_weight']} adds the text's cross-entropy to the KD loss, and "
                         f"{names['next_token']} trains on that cross-entropy alone: {names['fix_ce']}")


RECIPE_NAMES = {"hidden_weight": "shrink's distill.hidden_weight", "hidden": "the hidden axis",
                "fix_hidden": "drop hidden from axes or set hidden_weight 0",
                "ce_weight": "shrink's distill.ce_weight", "next_token": "objective next_token",
                "fix_ce": "set ce_weight 0 or objective kd"}


def _parse(d: Mapping[str, Any], where: str | None) -> ShrinkConfig:
    return ShrinkConfig.parse({"stage": "shrink", **d}, where=where)


def _validate(cfg: ShrinkConfig, stages: Sequence[Any], name_of: Any) -> None:
    from .base import STAGES

    _, _, axes = resolved(cfg)
    width_multiple(cfg)
    if cfg.speed_engine == "llama.cpp":
        from ..shrink.latency import check_engine

        check_engine("llama.cpp", cfg.speed_quant)  # llama-bench built, the GGUF type known: before anything loads
    if cfg.distill is not None:
        check_recovery(cfg.distill, axes, RECIPE_NAMES)
    for kind, other in stages:
        if other is cfg:
            break
        if STAGES.get(kind).changes_model:
            raise ValueError(f"stage shrink plans its shape on the model as loaded, so it must come before stage "
                             f"{kind} (list shrink first)")


def _text_source(ws: Workspace, cfg: ShrinkConfig) -> str:
    assert cfg.distill is not None
    if cfg.distill.text is not None:
        return cfg.distill.text
    calib = ws.state.get("calibration_source")
    if calib is None:
        raise ValueError("the shrink stage's distillation needs text and none is given: set distill.text (pydocs, "
                         "a text file or a folder), or list a calibrate stage, whose source it then reads")
    return calib[0]


def _stream(ws: Workspace, cfg: ShrinkConfig) -> Any:
    from ..shrink.distill import text_stream

    assert cfg.distill is not None
    return text_stream(ws.tokenizer, _text_source(ws, cfg), cfg.distill.seqlen, _distill_config(ws, cfg).seed)


def _distill_config(ws: Workspace, cfg: ShrinkConfig) -> DistillConfig:
    assert cfg.distill is not None
    fields = cfg.distill.to_dict()
    fields.pop("text")
    if fields["seed"] is None:
        fields["seed"] = ws.seed  # the run's seed (a calibrate stage's, a recipe's seeds)
    return DistillConfig.parse(fields)


def _check(ws: Workspace, cfg: ShrinkConfig) -> None:
    from ..shrink import plan_shrink
    from ..shrink.api import check_calibration
    from ..shrink.search_layers import check_layers

    target, search, axes = resolved(cfg)
    if not ws.causal_lm or ws.model is None:
        raise ValueError("stage shrink cuts a causal language model (a Hugging Face decoder); this task's model is not one")
    check_calibration(ws.model, ws.calibration)
    if search == "uniform":
        plan_shrink(ws.model, target, ws.calibration, axes, cfg.importance,  # family, target, axes: changes nothing
                    width_multiple=width_multiple(cfg))
        ws.state[PLAN] = None
    else:
        if target.kind == "speed":
            ws.say(f"timing the dense model and each block width in {cfg.speed_engine} (1 thread) ...")
        ws.state[PLAN] = check_layers(ws.model, target, axes, optimizer=cfg.optimizer, speed_engine=cfg.speed_engine,
                                      speed_quant=cfg.speed_quant, width_multiple=width_multiple(cfg))
    if cfg.distill is not None:
        if ws.tokenizer is None:
            raise ValueError("the shrink stage's distillation streams text through the model's tokenizer, and this "
                             "workspace has none")
        next(iter(_stream(ws, cfg)))  # the text is there and holds at least one window (else one clear error)


def _run(ws: Workspace, cfg: ShrinkConfig) -> StageResult:
    from ..shrink import shrink_, shrink_layers_
    from ..shrink.distill import distill_

    target, search, axes = resolved(cfg)
    budget = ws.state.pop(PLAN, None)
    kd = _distill_config(ws, cfg) if cfg.distill is not None else None
    # the unpruned model teaches (a copy only where the loss reads one: not for plain next-token training)
    teacher = copy.deepcopy(ws.model) if kd is not None and kd.needs_teacher else None
    if cfg.schedule == "adapt":
        return _run_adapt(ws, cfg, target, axes, kd, teacher)
    ws.say(f"shrinking to {target} along {', '.join(axes)} ({search}) ...")
    t0 = time.perf_counter()
    if search == "uniform":
        report: Any = shrink_(ws.model, target, ws.calibration, axes, importance=cfg.importance,
                              candidates=cfg.candidates, progress=ws.progress, width_multiple=width_multiple(cfg))
    else:
        report = shrink_layers_(ws.model, target, ws.calibration, axes, optimizer=cfg.optimizer,
                                latency=budget.latency if budget is not None else None,
                                score_on=ws.calibration[:cfg.score_windows], progress=ws.progress,
                                width_multiple=width_multiple(cfg))
    record: dict[str, Any] = {"search": search, "schedule": cfg.schedule, "shrink": report.to_dict()}
    meta: dict[str, Any] = {"method": "shrink", "config": cfg.to_dict(), "shrink": report.to_dict(),
                            "prune_seconds": time.perf_counter() - t0}
    headline = str(report)
    if kd is not None:
        ws.say(f"{describe_recovery(kd)}: {kd.steps} steps × {kd.batch_size} × {kd.seqlen} tokens ...")
        done = distill_(ws.model, teacher, _stream(ws, cfg), kd, progress=ws.progress)
        record["distill"] = meta["distill"] = done.to_dict()
        record["distill"]["text"] = meta["distill"]["text"] = _text_source(ws, cfg)
        headline += f"\n{done}"
    del teacher
    return StageResult(record, meta, headline)


def describe_recovery(kd: DistillConfig) -> str:
    """How the model is recovered, in words (the progress line)."""
    how = "distilling from the unpruned model" if kd.objective == "kd" else "fine-tuning on the text's next tokens"
    return how + (f" into rank-{kd.lora_rank} LoRA adapters" if kd.train == "lora" else "")


def _run_adapt(ws: Workspace, cfg: ShrinkConfig, target: Any, axes: tuple[str, ...], kd: DistillConfig | None,
               teacher: Any) -> StageResult:
    """Adapt-Pruner's schedule: per-layer cuts in rounds, each followed by its share of the training."""
    from ..shrink.schedule import adapt_shrink_

    assert kd is not None  # resolved() refuses schedule adapt without a distill block
    adapt = adapt_config(cfg, axes)
    ws.say(f"shrinking to {target} along {', '.join(axes)} in {adapt.rounds} rounds (Adapt-Pruner), "
           f"{describe_recovery(kd)} after each: {kd.steps} steps in all × {kd.batch_size} × {kd.seqlen} tokens ...")
    t0 = time.perf_counter()
    report = adapt_shrink_(ws.model, teacher, str(target), ws.calibration, _stream(ws, cfg), adapt, kd,
                           progress=ws.progress)
    del teacher
    trained = {**report.distill(), "text": _text_source(ws, cfg)}
    record: dict[str, Any] = {"search": "per-layer", "schedule": "adapt", "shrink": report.to_dict(),
                              "distill": trained}
    meta: dict[str, Any] = {"method": "shrink", "config": cfg.to_dict(), "shrink": report.to_dict(),
                            "distill": dict(trained), "prune_seconds": time.perf_counter() - t0}
    return StageResult(record, meta, str(report))


register_stage(StageKind(
    "shrink", _parse, _run,
    "cut a decoder to a smaller dense shape under a params=/memory=/speed= budget (heads, neurons, hidden width, "
    "depth; uniform or per layer), then optionally distil it from the unpruned model (prunekit.shrink)",
    check=_check, validate=_validate, removes=True, needs_calibration=lambda cfg: True,
    uses_calibration="ranks heads, neurons, channels and blocks on calibration text", noun="shrinking"))
