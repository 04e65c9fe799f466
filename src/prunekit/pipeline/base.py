"""The stage registry and the loop that runs stages.

A stage kind holds its typed config, its checks and its run. ``prunekit prune`` turns its flags into a
list of stages, ``prunekit run`` turns a recipe into the same stages, and benchmarks run them through
the same :func:`run_stages`: every check of every stage runs before the first stage that changes the
model, so bad input never leaves a half-changed model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

from ..core.config import Config, ConfigError
from ..core.registry import Registry

Stage = tuple[str, Config]


def _silent(text: str) -> None:
    return None


@dataclass
class Workspace:
    """What stages share while they run: the model and its tokenizer, the data the stages read, where
    the output goes, and what each stage reported (``meta`` becomes ``prunekit.json``)."""

    model: Any = None
    tokenizer: Any = None
    causal_lm: bool = True
    source: str | None = None  # what the model was loaded from (an alias, a folder, a GGUF file)
    source_path: Path | None = None
    calibration: Any = None  # token ids (nsamples, seqlen) of a language model
    data: Any = None  # batches of (inputs, targets), for data-driven criteria
    loss_fn: Any = None
    example_inputs: Any = None
    train_set: Callable[[int], Any] | None = None  # a classification task's training set for a seed
    model_fn: Callable[[], Any] | None = None  # a fresh model of the task's architecture (data scores' proxies)
    seed: int = 0
    progress: bool = True
    say: Callable[[str], None] = _silent  # progress chatter
    warn: Callable[[str], None] = _silent  # warnings a user must see (even when quiet)
    folder: Path | None = None  # the fresh output folder a save stage writes into
    meta: dict[str, Any] = field(default_factory=dict)  # the fields of prunekit.json, filled stage by stage
    records: list[dict[str, Any]] = field(default_factory=list)  # one per stage run: {"stage": kind, ...}
    headlines: list[str] = field(default_factory=list)  # one line per stage that changed the model
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # measurements by label (before, after)
    state: dict[str, Any] = field(default_factory=dict)  # stages' own state (evaluation windows, a dense copy)
    # how errors name a stage's field: the command line names its flag (--nsamples), Python the field
    name_of: Callable[[str, str], str] = lambda kind, name: name

    def prune_inputs(self) -> dict[str, Any]:
        """The data keywords of ``prune_`` this workspace holds."""
        out = {"calibration": self.calibration, "data": self.data, "loss_fn": self.loss_fn,
               "example_inputs": self.example_inputs}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class StageResult:
    """What one stage did: ``record`` (plain data the results store keeps), ``meta`` (fields of
    ``prunekit.json``) and a one-line ``headline`` (empty for stages that do not change the model)."""

    record: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    headline: str = ""


@dataclass(frozen=True)
class StageKind:
    """A kind of stage.

    ``parse(fields, where)`` turns a mapping into the typed config; ``check(ws, cfg)`` raises on what
    cannot work once the model is loaded (it runs, for every stage, before the first stage that changes
    the model); ``run(ws, cfg)`` does the work. ``prepare(ws, cfg)`` (optional) is a context entered
    before anything runs and left after everything ran (the save stage's output folder).
    ``setup`` marks the stages that only bring the model and its data (load, calibrate): the checks
    run after them. ``changes_model`` marks the stages a recipe lists (its task loads, calibrates and measures),
    ``in_recipes`` one that changes nothing but a recipe lists too (export);
    ``removes`` the ones that make the model smaller instead of zeroing weights; ``needs_calibration(cfg)``
    whether it reads calibration text; ``uses_calibration`` says what for (in errors).
    ``validate(cfg, stages, name_of)`` (optional) checks a stage against the others before anything loads.
    The command-line form: ``flags`` maps each option of the stage to its config field; ``trigger`` is
    the option that adds the stage; ``noun``, ``summary`` and ``hint`` word the errors about options
    that would be ignored."""

    name: str
    parse: Callable[[Mapping[str, Any], str | None], Config]
    run: Callable[[Workspace, Any], StageResult]
    about: str
    check: Callable[[Workspace, Any], None] | None = None
    prepare: Callable[[Workspace, Any], ContextManager[Any]] | None = None
    changes_model: bool = True
    in_recipes: bool = False
    setup: bool = False
    removes: bool = False
    needs_calibration: Callable[[Any], bool] = lambda cfg: False
    uses_calibration: str = "needs calibration text"
    validate: Callable[[Any, Sequence["Stage"], Callable[[str, str], str]], None] | None = None
    flags: Mapping[str, str] = field(default_factory=dict)
    trigger: str | None = None
    variants: Callable[[], Registry[Any]] | None = None  # the registry whose configs this stage takes (methods)
    noun: str = ""
    summary: str = ""
    hint: str = ""


STAGES: Registry[StageKind] = Registry("stage", key="stage")


def register_stage(kind: StageKind) -> StageKind:
    """Add a stage kind to :data:`STAGES` (its name must be new)."""
    STAGES.add(kind.name, kind)
    return kind


def parse_stage(data: Mapping[str, Any], where: str | None = None) -> Stage:
    """``(kind, config)`` for one stage mapping (``{"stage": "prune", "method": ..., ...}``)."""
    at = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{at}a stage is a mapping with 'stage: <kind>', got {type(data).__name__}")
    fields = dict(data)
    if "stage" not in fields:
        raise ConfigError(f"{at}a stage needs 'stage:' (one of {', '.join(STAGES.names())})", [(("stage",), "missing")])
    kind = fields.pop("stage")
    try:
        entry = STAGES.get(kind)
    except ValueError as exc:
        raise ConfigError(f"{at}{exc}", [(("stage",), str(exc))]) from None
    return kind, entry.parse(fields, where)


def stage_dict(kind: str, config: Config) -> dict[str, Any]:
    """The canonical mapping of a parsed stage (what the store keeps and a recipe can hold again)."""
    return {"stage": kind, **config.to_dict()}


def check_stages(stages: Sequence[Stage], calibrated: bool,
                 name_of: Callable[[str, str], str] = lambda kind, name: name) -> None:
    """Checks across stages that need no model: a stage that reads calibration text has it
    (``calibrated``: whether calibration comes with the stages' inputs or from a calibrate stage), and
    each stage's own ``validate`` against the others."""
    have = calibrated
    for i, (kind, cfg) in enumerate(stages):
        entry = STAGES.get(kind)
        if entry.validate is not None:
            entry.validate(cfg, stages, name_of)
        if kind == "calibrate":
            have = True
        elif entry.needs_calibration(cfg) and not have:
            raise ValueError(f"stage {i} ({kind}) {entry.uses_calibration}, but no calibration text comes before it")


def run_stages(stages: Sequence[Stage], ws: Workspace) -> Workspace:
    """Run ``stages`` in order on ``ws``. Each stage's ``validate`` against the others runs first; every
    stage's check runs once the setup stages (load, calibrate) are done, before anything is measured or
    changed; each stage's result goes into ``ws.records``, ``ws.meta`` and ``ws.headlines``."""
    kinds = [STAGES.get(kind) for kind, _ in stages]
    for entry, (_, cfg) in zip(kinds, stages):  # (the command line ran these in check_stages already)
        if entry.validate is not None:
            entry.validate(cfg, stages, ws.name_of)
    with contextlib.ExitStack() as stack:
        for entry, (_, cfg) in zip(kinds, stages):
            if entry.prepare is not None:
                stack.enter_context(entry.prepare(ws, cfg))
        checked = False
        for i, (entry, (kind, cfg)) in enumerate(zip(kinds, stages)):
            if not entry.setup and not checked:
                for later, (_, later_cfg) in zip(kinds[i:], stages[i:]):
                    if later.check is not None:
                        later.check(ws, later_cfg)
                checked = True
            result = entry.run(ws, cfg)
            ws.records.append({"stage": kind, **result.record})
            ws.meta.update(result.meta)
            if result.headline:
                ws.headlines.append(result.headline)
    return ws
