"""The method registry and the plan every pruning method receives.

A method turns a :class:`PrunePlan` (targets, sparsity, pattern, allocation, data) into one boolean
keep-mask per target; :func:`prunekit.prune_` validates the plan first and applies the masks only
once every one of them is computed, so a failure never leaves a half-pruned model. A method that must
prune as it goes (block by block, updating weights as SparseGPT does) defines ``apply_(model, plan)``
instead and records every weight it is about to change in ``plan.journal``, so a failure can put
masks and weights back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from ..core.atomic import remove_scratch, scratch_folder
from ..core.mask import weight_of

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
    config: Any = None  # the PruneConfig this plan was made from
    skipped: dict[str, str] = field(default_factory=dict)  # tensors in scope left dense, with the reason
    journal: "WeightJournal | None" = None


class WeightJournal:
    """Copies of the weights a method changes, taken before the first change, so they can be put back.

    The copies go to a temporary folder on disk rather than to memory, so that being able to undo a
    failed SparseGPT run does not add a second copy of the model to its memory footprint. The folder
    (``<tmp>/prunekit-journal-<pid>-…``) is removed on close, at exit, or, after a kill, by the next run.
    """

    def __init__(self) -> None:
        self.saved: dict[int, tuple[nn.Module, Path]] = {}
        self._folder: str | None = None

    def record(self, module: nn.Module) -> None:
        """Keep a copy of ``module``'s (dense) weight unless one is kept already."""
        if id(module) in self.saved:
            return
        if self._folder is None:
            self._folder = str(scratch_folder("prunekit-journal"))
        path = Path(self._folder) / f"{len(self.saved)}.pt"
        torch.save(weight_of(module).detach().cpu(), path)
        self.saved[id(module)] = (module, path)

    def restore(self) -> None:
        """Write every recorded weight back."""
        with torch.no_grad():
            for module, path in self.saved.values():
                leaf = weight_of(module)
                leaf.copy_(torch.load(path, weights_only=True).to(leaf.device))

    def close(self) -> None:
        """Delete the copies."""
        if self._folder is not None:
            remove_scratch(self._folder)
        self._folder = None
        self.saved.clear()


class Method(Protocol):
    """A pruning method: ``validate`` checks the plan before anything changes, ``masks`` computes them
    (or, for methods that prune as they go, an ``apply_(model, plan)`` that prunes in place)."""

    name: str

    def validate(self, model: nn.Module, plan: PrunePlan) -> None: ...

    def masks(self, model: nn.Module, plan: PrunePlan) -> dict[str, Tensor]: ...


METHODS: Registry[Callable[[], Method]] = Registry("method", key="method")


def register_method(name: str, config: type | None = None):
    """Decorator registering a method factory under ``name`` with its config class (a subclass of
    :class:`prunekit.methods.config.PruneConfig`; by default one with no options of its own)."""

    def deco(factory):
        METHODS.add(name, factory, config or _plain_config(name))
        return factory

    return deco


def _plain_config(name: str) -> type:
    from typing import Literal

    from pydantic import create_model

    from .config import PruneConfig

    return create_model(f"{name.title().replace('_', '')}Config", __base__=PruneConfig,
                        method=(Literal[name], name))
