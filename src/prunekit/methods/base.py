"""The method registry and the plan every pruning method receives.

A method turns a :class:`PrunePlan` (targets, sparsity, pattern, allocation, data) into one boolean
keep-mask per target; :func:`prunekit.prune_` validates the plan first and applies the masks only
once every one of them is computed, so a failure never leaves a half-pruned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from torch import Tensor, nn

from ..core.pattern import Pattern
from ..core.registry import Registry
from ..core.scope import Target
from ..criteria.base import ScoreContext


@dataclass
class PrunePlan:
    """Everything a method needs to compute masks."""

    targets: list[Target]
    sparsity: float
    pattern: Pattern
    allocation: str
    allocation_options: dict[str, Any]
    context: ScoreContext
    calibration: Any = None
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """A pruning method: ``validate`` checks the plan before anything changes, ``masks`` computes them."""

    name: str

    def validate(self, model: nn.Module, plan: PrunePlan) -> None: ...

    def masks(self, model: nn.Module, plan: PrunePlan) -> dict[str, Tensor]: ...


METHODS: Registry[Callable[[], Method]] = Registry("method")


def register_method(name: str):
    """Decorator registering a method factory under ``name``."""
    return METHODS.register(name)
