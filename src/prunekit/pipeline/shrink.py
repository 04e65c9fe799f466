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

Checked before any stage changes the model: the family and its layout, the target (an unreachable one names
the most the search reaches), the axes, the calibration windows, and for distillation that text is there
(``distill.text``, else the calibration source of a calibrate stage) with a tokenizer to read it, and that a
hidden-state loss is not asked of a model whose residual width is cut. The shape is planned on the model as
loaded, so the stage must come before any other stage that changes the model.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from ..core.config import Config
from ..shrink.distill import DistillConfig
from .base import StageKind, StageResult, Workspace, register_stage

SEARCHES = ("auto", "uniform", "per-layer")
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
    per-layer for speed=, else uniform) along ``axes`` (default: heads, neurons, hidden, depth for uniform;
    heads, neurons per layer), units ranked by ``importance``; speed= is timed in ``speed_engine`` (transformers,
    or llama.cpp at GGUF type ``speed_quant``, q8_0 by default); cut widths are multiples of ``width_multiple``
    (None: 256 when ``speed_quant`` is a K-quant, else 32; :func:`prunekit.shrink.search.resolve_width_multiple`);
    then ``distill`` (None: no recovery)."""

    stage: Literal["shrink"] = "shrink"
    target: str = "params=0.6"
    search: Literal[SEARCHES] = "auto"
    axes: tuple[str, ...] | None = None
    importance: Literal["activation", "magnitude"] = "activation"
    candidates: int = Field(4, ge=1)
    optimizer: Literal["milp", "greedy"] = "milp"
    score_windows: int = Field(4, ge=1)
    speed_engine: Literal["transformers", "llama.cpp"] = "transformers"
    speed_quant: str | None = None
    width_multiple: int | None = None
    distill: ShrinkDistillConfig | None = None


def resolved(cfg: ShrinkConfig) -> tuple[Any, str, tuple[str, ...]]:
    """The parsed target, the search (``auto`` resolved) and the axes (defaults filled in, validated); raises
    ValueError on a combination that cannot run. Needs no model."""
    from ..shrink.budget import parse_target
    from ..shrink.perlayer import check_per_layer_axes
    from ..shrink.search import AXES, check_axes
    from ..shrink.search_layers import DEFAULT_PER_LAYER_AXES

    target = parse_target(cfg.target)
    search = cfg.search if cfg.search != "auto" else ("per-layer" if target.kind == "speed" else "uniform")
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


def _parse(d: Mapping[str, Any], where: str | None) -> ShrinkConfig:
    return ShrinkConfig.parse({"stage": "shrink", **d}, where=where)


def _validate(cfg: ShrinkConfig, stages: Sequence[Any], name_of: Any) -> None:
    from .base import STAGES

    resolved(cfg)
    width_multiple(cfg)
    if cfg.speed_engine == "llama.cpp":
        from ..shrink.latency import check_engine

        check_engine("llama.cpp", cfg.speed_quant)  # llama-bench built, the GGUF type known: before anything loads
    d = cfg.distill
    if d is not None and d.hidden_weight > 0 and "hidden" in resolved(cfg)[2]:
        raise ValueError("shrink's distill.hidden_weight compares residual streams, which the hidden axis cuts: "
                         "drop hidden from axes or set hidden_weight 0")
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
    teacher = copy.deepcopy(ws.model) if cfg.distill is not None else None  # the unpruned model teaches
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
    record: dict[str, Any] = {"search": search, "shrink": report.to_dict()}
    meta: dict[str, Any] = {"method": "shrink", "config": cfg.to_dict(), "shrink": report.to_dict(),
                            "prune_seconds": time.perf_counter() - t0}
    headline = str(report)
    if cfg.distill is not None:
        kd = _distill_config(ws, cfg)
        ws.say(f"distilling from the unpruned model: {kd.steps} steps × {kd.batch_size} × {kd.seqlen} tokens ...")
        done = distill_(ws.model, teacher, _stream(ws, cfg), kd, progress=ws.progress)
        record["distill"] = meta["distill"] = done.to_dict()
        record["distill"]["text"] = meta["distill"]["text"] = _text_source(ws, cfg)
        headline += f"\n{done}"
    del teacher
    return StageResult(record, meta, headline)


register_stage(StageKind(
    "shrink", _parse, _run,
    "cut a decoder to a smaller dense shape under a params=/memory=/speed= budget (heads, neurons, hidden width, "
    "depth; uniform or per layer), then optionally distil it from the unpruned model (prunekit.shrink)",
    check=_check, validate=_validate, removes=True, needs_calibration=lambda cfg: True,
    uses_calibration="ranks heads, neurons, channels and blocks on calibration text", noun="shrinking"))
