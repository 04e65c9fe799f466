"""Recipes: one file (or the same object in Python) says what to prune, on which data, how to measure.

    name: smollm2-wanda-sweep
    task: {task: lm, model: smollm2-135m,
           calibration: {source: pydocs, nsamples: 32, seqlen: 512},
           evaluation: {windows: 16}}
    stages:
      - {stage: prune, method: wanda, sparsity: 0.5}
    sweep:                      # the cartesian product of these values; keys are <stage>.<field>
      prune.method: [wanda, sparsegpt]
      prune.sparsity: [0.5, 0.6, 0.7]
      # a key naming a whole stage takes mappings of fields that change together:
      # prune: [{method: magnitude, allocation: global}, {method: random, allocation: uniform}]
    seeds: [0]

Every stage is parsed into its typed config when the recipe is read, for every point of the sweep,
so an unknown key, a wrong type or an impossible value fails before any model is loaded — naming
the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..core.config import Config, ConfigError
from .stages import parse_stage, stage_dict
from .yaml_lines import line_of, load_with_lines

LM_MEASURES = ("perplexity", "size", "macs", "latency", "generation", "memory", "layers")
CLASSIFY_MEASURES = ("accuracy", "size", "macs", "latency", "layers")


class TextCalibration(Config):
    """Calibration text for a language model."""

    source: str = "pydocs"
    nsamples: int = Field(32, ge=1)
    seqlen: int = Field(512, ge=1)


class TextEvaluation(Config):
    """Held-out evaluation text (by default the calibration source and sequence length)."""

    source: str | None = None
    windows: int = Field(16, ge=1)
    seqlen: int | None = Field(None, ge=1)


class LMTask(Config):
    """Prune a language model (an alias, a Hugging Face folder or a GGUF file) and measure it on text."""

    task: Literal["lm"] = "lm"
    model: str = "smollm2-135m"
    calibration: TextCalibration = Field(default_factory=TextCalibration)
    evaluation: TextEvaluation = Field(default_factory=TextEvaluation)
    device: str | None = None
    gen_tokens: int = Field(16, ge=1)


class ClassifyTask(Config):
    """Train a reference network on an image set, prune it and measure test accuracy."""

    task: Literal["classify"] = "classify"
    model: Literal["mlp", "small-cnn", "resnet"] = "small-cnn"
    widths: list[int] | None = None
    data: Literal["fashion-mnist", "digits"] = "fashion-mnist"
    train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(128, ge=1)
    calibration_batches: int = Field(4, ge=1)
    latency_batch: int = Field(256, ge=1)


Task = Annotated[Union[LMTask, ClassifyTask], Field(discriminator="task")]


@dataclass
class RunSpec:
    """One run of a recipe: the task, the parsed stages, the seed, and what the sweep set."""

    recipe: str
    task: LMTask | ClassifyTask
    stages: list[tuple[str, Config]]
    seed: int
    measures: list[str]
    settings: dict[str, Any] = field(default_factory=dict)  # the swept values of this run

    def config_dict(self) -> dict[str, Any]:
        """Everything that defines the run, as plain data."""
        return {"task": self.task.to_dict(), "stages": [stage_dict(k, c) for k, c in self.stages],
                "seed": self.seed, "measures": list(self.measures)}

    def config_hash(self) -> str:
        """A hash of :meth:`config_dict` (the store keys a run by it and its protocol)."""
        blob = json.dumps(self.config_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """A short name: the stages and their main settings."""
        parts = []
        for kind, cfg in self.stages:
            d = cfg.to_dict()
            main = [str(d[k]) for k in ("method", "what", "sparsity", "pattern", "allocation") if d.get(k) not in
                    (None, "unstructured", "uniform")]
            parts.append(kind + (f"({', '.join(main)})" if main else ""))
        return " → ".join(parts) or "dense"


def _stage_key(stages: list[dict[str, Any]], key: str) -> tuple[int, str]:
    """(stage index, field) of a sweep key; the field is '' for a key that names a whole stage (its
    values are then mappings of fields set together)."""
    head, _, fld = key.partition(".")
    if head == "stages":
        head, _, fld = fld.partition(".")
    if head.isdigit():
        i = int(head)
        if i >= len(stages):
            raise ValueError(f"sweep key {key!r}: there are {len(stages)} stages")
        return i, fld
    hits = [i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("stage") == head]
    if len(hits) != 1:
        raise ValueError(f"sweep key {key!r}: {'no' if not hits else 'more than one'} stage {head!r}; "
                         f"name it by position instead (e.g. 0.{fld})")
    return hits[0], fld


class Recipe(Config):
    """A recipe: a task, its stages, the sweep over their settings, the seeds, the measurements."""

    name: str
    description: str = ""
    task: Task = Field(default_factory=LMTask)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    measure: list[str] | None = None
    baseline: bool = True  # also measure the unpruned model (once per seed)

    @field_validator("sweep")
    @classmethod
    def _nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep {key!r} has no values")
        return v

    @model_validator(mode="after")
    def _check_runs(self, info: ValidationInfo) -> "Recipe":
        allowed = LM_MEASURES if self.task.task == "lm" else CLASSIFY_MEASURES
        unknown = [m for m in (self.measure or []) if m not in allowed]
        if unknown:
            raise ValueError(f"unknown measurement(s) {unknown} for task {self.task.task!r}; allowed: {', '.join(allowed)}")
        if not (info.context or {}).get("defer_runs"):
            self.runs()  # every point of the sweep must parse
        return self

    def measures(self) -> list[str]:
        """The measurements to take (the task's defaults unless ``measure`` lists them)."""
        if self.measure is not None:
            return list(self.measure)
        return list(LM_MEASURES if self.task.task == "lm" else CLASSIFY_MEASURES)

    def runs(self) -> list[RunSpec]:
        """Every run the recipe asks for (sweep × seeds), stages parsed into typed configs; with
        ``baseline`` one run without stages per seed comes first."""
        keys = list(self.sweep)
        located = [_stage_key(self.stages, k) for k in keys]
        out: list[RunSpec] = []
        for seed in self.seeds:
            if self.baseline:
                out.append(RunSpec(self.name, self.task, [], seed, self.measures()))
            for values in itertools.product(*(self.sweep[k] for k in keys)):
                stages = [dict(s) if isinstance(s, dict) else s for s in self.stages]
                for (i, fld), value in zip(located, values):
                    if fld:
                        stages[i][fld] = value
                    elif isinstance(value, dict):
                        stages[i].update(value)
                    else:
                        raise ConfigError(f"sweep over a whole stage takes mappings of fields set together "
                                          f"(e.g. {{method: random, allocation: uniform}}), got {value!r}")
                parsed = []
                for i, s in enumerate(stages):
                    if isinstance(s, dict) and "seed" not in s and s.get("stage") == "prune":
                        s = {**s, "seed": seed}
                    try:
                        parsed.append(parse_stage(s, where=None))
                    except ConfigError as exc:
                        point = ", ".join(f"{k}={v!r}" for k, v in zip(keys, values))
                        at = f" (at {point})" if point else ""
                        raise ConfigError(f"stages[{i}]{at}: {exc}",
                                          [(("stages", i) + loc, msg + at) for loc, msg in exc.problems]) from None
                _check_measurable(parsed, self.measures())
                out.append(RunSpec(self.name, self.task, parsed, seed, self.measures(), dict(zip(keys, values))))
        return out

    @classmethod
    def from_yaml(cls, source: str | Path) -> "Recipe":
        """Read a recipe from a YAML file (a path) or YAML text; errors name the file, line and field."""
        path = Path(source) if not isinstance(source, str) or "\n" not in source else None
        if path is not None and not path.exists():
            raise FileNotFoundError(f"recipe {str(path)!r} does not exist")
        text = path.read_text() if path is not None else str(source)
        where = str(path) if path is not None else "<recipe>"
        try:
            data, lines = load_with_lines(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a recipe is a YAML mapping (name, task, stages, sweep, seeds)")
        try:
            recipe = cls.model_validate(data, context={"defer_runs": True})
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                loc = tuple(e.get("loc", ()))
                msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
                if e.get("type") == "extra_forbidden":
                    msg = f"unknown key {loc[-1]!r}"
                problems.append((loc, msg))
            raise _located(ConfigError("", problems), where, lines) from None
        try:
            recipe.runs()  # every point of the sweep parses into typed stage configs
        except ConfigError as exc:
            raise _located(exc, where, lines, str(exc)) from None
        except ValueError as exc:
            raise ConfigError(f"{where}:{line_of(lines, ('sweep',)) or '?'}: sweep: {exc}") from None
        return recipe

    @classmethod
    def parse_file(cls, path: str | Path) -> "Recipe":
        """Alias of :meth:`from_yaml` for a path."""
        return cls.from_yaml(Path(path))


def _check_measurable(stages: list[tuple[str, Any]], measures: list[str]) -> None:
    """A FastV token patch prunes the prompt at prefill, so the logits cover the kept positions only and a
    perplexity is not defined: refused with the measurements that are, before any model loads."""
    if "perplexity" in measures and any(kind == "tokens" and cfg.method == "fastv" for kind, cfg in stages):
        msg = ("perplexity is not defined for a model with a FastV token patch (its prefill logits cover the kept "
               "prompt positions only); list the measurements without it, e.g. measure: [generation, size]")
        raise ConfigError(msg, [(("measure",), msg)])


def _located(exc: ConfigError, where: str, lines: dict, fallback: str = "") -> ConfigError:
    if not exc.problems:
        return ConfigError(f"{where}: {fallback or exc}")
    parts = []
    for loc, msg in exc.problems:
        loc = tuple(p for p in loc if not (isinstance(p, str) and p in ("lm", "classify")))  # union tags
        line = line_of(lines, loc)
        field_name = ".".join(str(p) for p in loc) or "(recipe)"
        parts.append(f"{where}:{line if line is not None else '?'}: {field_name}: {msg}")
    return ConfigError("\n".join(parts), exc.problems)
