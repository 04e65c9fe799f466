"""``StructuredConfig``: every setting of one structured-pruning call, as data (a recipe stage).

    cfg = StructuredConfig(sparsity=0.3, importance={"importance": "taylor", "batches": 4}, ignore=["fc"])
    ps.prune_(model, x, cfg)                  # the same as the keyword form
    StructuredConfig.from_yaml(cfg.to_yaml()) == cfg
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..core.config import Config
from ..core.fraction import Sparsity
from .graph.importance import (ActivationConfig, BetaRankConfig, BNScaleConfig, L1Config, L2Config, LrpConfig,
                               RandomConfig, TaylorConfig)

ImportanceField = Annotated[L1Config | L2Config | BNScaleConfig | TaylorConfig | RandomConfig | ActivationConfig
                            | BetaRankConfig | LrpConfig,
                            Field(discriminator="importance")]
WHATS = ("channels", "heads", "neurons", "layers")  # the units structured pruning removes


class StructuredConfig(Config):
    """Settings of ``structured.prune`` / ``prune_`` (see their docstrings for each field)."""

    method: Literal["structured"] = "structured"
    sparsity: Sparsity = 0.5
    what: Literal[WHATS] = "channels"
    importance: ImportanceField = Field(default_factory=L2Config)
    allocation: Literal["uniform", "global"] = "uniform"
    round_to: int | None = Field(default=None, ge=1)
    target: Literal["channels", "macs"] = "channels"
    ignore: list[str] = Field(default_factory=list)
    seed: int = 0
    strict: bool = False
    engine: Literal["record", "fx"] = "record"

    @field_validator("importance", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return {"importance": value} if isinstance(value, str) else value
