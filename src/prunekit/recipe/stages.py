"""Stage kinds a recipe can hold, each parsed into a typed config.

A stage is a mapping with ``stage: <kind>`` and the fields of that kind's config:

    - stage: prune            # the rest is a method config (prunekit.methods.config)
      method: wanda
      sparsity: 0.5
    - stage: finetune         # a short masked fine-tune (classification tasks)
      epochs: 0.5

Packages add their own kinds with :func:`register_stage` (structured pruning, recovery, slicing,
experts, tokens, export, data selection); the runner (``prunekit.bench``) registers how each runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from pydantic import Field

from ..core.config import Config, ConfigError
from ..core.registry import Registry
from ..methods import METHODS


@dataclass(frozen=True)
class StageKind:
    """A stage kind: its name, how a mapping becomes its config, and a line about it."""

    name: str
    parse: Callable[[Mapping[str, Any], str | None], Config]
    about: str


STAGES: Registry[StageKind] = Registry("stage", key="stage")


def register_stage(name: str, parse: Callable[[Mapping[str, Any], str | None], Config], about: str) -> None:
    """Register a stage kind whose fields ``parse(mapping, where)`` turns into a config."""
    STAGES.add(name, StageKind(name, parse, about))


def parse_stage(data: Mapping[str, Any], where: str | None = None) -> tuple[str, Config]:
    """``(kind, config)`` for one stage mapping (``{"stage": "prune", "method": ..., ...}``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where + ': ' if where else ''}a stage is a mapping with 'stage: <kind>', got "
                          f"{type(data).__name__}")
    fields = dict(data)
    if "stage" not in fields:
        raise ConfigError(f"{where + ': ' if where else ''}a stage needs 'stage:' (one of {', '.join(STAGES.names())})",
                          [(("stage",), "missing")])
    kind = fields.pop("stage")
    try:
        entry = STAGES.get(kind)
    except ValueError as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}", [(("stage",), str(exc))]) from None
    return kind, entry.parse(fields, where)


def stage_dict(kind: str, config: Config) -> dict[str, Any]:
    """The canonical mapping of a parsed stage (what the store keeps and a recipe can hold again)."""
    return {"stage": kind, **config.to_dict()}


class FinetuneConfig(Config):
    """A short fine-tune of a classification model, masks kept (``epochs`` of the training set)."""

    stage: Literal["finetune"] = "finetune"
    epochs: float = Field(0.25, gt=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(128, ge=1)


class FinalizeConfig(Config):
    """Bake the masks into the weights (``prunekit.finalize_``)."""

    stage: Literal["finalize"] = "finalize"


register_stage("prune", lambda d, where: METHODS.parse_config(d, where=where),
               "mask weights with any registered method (prunekit.prune_)")
register_stage("finetune", lambda d, where: FinetuneConfig.parse({"stage": "finetune", **d}, where=where),
               "fine-tune a classification model briefly, masks kept")
register_stage("finalize", lambda d, where: FinalizeConfig.parse({"stage": "finalize", **d}, where=where),
               "bake masks into the weights")
