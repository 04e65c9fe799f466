"""The method registry, the plan every pruning method receives, and the one interface methods implement.

:func:`prunekit.methods.plan_prune` checks a call and returns a :class:`PrunePlan`: the typed config, the
method object, the targets, the pattern and the data — computed once, immutable. :func:`apply_plan_`
applies it at a sparsity given as an argument (so a schedule prunes one plan to a rising sparsity). Every
method implements :class:`Method`: ``validate(model, plan)`` before anything changes, and
``apply_(model, plan, sparsity, log)``, which prunes in place and records in ``log`` every weight it is
about to rewrite (``log.journal``), so a failure can put masks and weights back, and what it left dense.

A method is registered with its config class beside its algorithm, one way::

    @register_method("wanda", WandaConfig)
    class Wanda(BlockwiseMethod): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from ..infra.atomic import remove_scratch, scratch_folder
from ..core.mask import weight_of
from ..core.pattern import Pattern
from ..core.registry import Registry
from ..core.scope import Target
from ..criteria.base import ScoreContext

if TYPE_CHECKING:
    from .config import PruneConfig


@dataclass(frozen=True)
class PrunePlan:
    """Everything a method needs, checked and fixed before anything changes (made by ``plan_prune``)."""

    method: "Method"  # the registered method's object
    config: "PruneConfig"  # the typed config: every setting, with its defaults
    targets: tuple[Target, ...]  # Linear/Conv weights in scope that the pattern can tile
    pattern: Pattern
    context: ScoreContext  # data, loss, example inputs for criteria
    calibration: Any = None
    progress: bool = True
    experts: tuple[Target, ...] = ()  # fused 3-D expert parameters in scope
    skipped: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # left dense, with the reason

    @property
    def sparsity(self) -> float:
        """The config's target sparsity (given, or implied by an N:M pattern)."""
        return self.config.target_sparsity()

    @property
    def allocation(self) -> str:
        return self.config.allocation

    @property
    def allocation_options(self) -> dict[str, Any]:
        return self.config.allocation_options()


@dataclass
class PruneLog:
    """What one application of a plan records as it goes: the weights it rewrites (so they can be put back),
    the tensors it left dense (with the reason) and notes for the report."""

    journal: "WeightJournal | None" = None
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, module: nn.Module, name: str = "weight") -> None:
        """Keep a copy of ``module.<name>`` before a method rewrites it (no-op without a journal)."""
        if self.journal is not None:
            self.journal.record(module, name)


class WeightJournal:
    """Copies of the weights a method changes, taken before the first change, so they can be put back.

    The copies go to a temporary folder on disk rather than to memory, so that being able to undo a
    failed SparseGPT run does not add a second copy of the model to its memory footprint. The folder
    (``<tmp>/prunekit-journal-<pid>-…``) is removed on close, at exit, or, after a kill, by the next run.
    """

    def __init__(self) -> None:
        self.saved: dict[tuple[int, str], tuple[nn.Module, str, Path]] = {}
        self._folder: str | None = None

    def record(self, module: nn.Module, name: str = "weight") -> None:
        """Keep a copy of ``module.<name>``'s (dense) tensor unless one is kept already."""
        if (id(module), name) in self.saved:
            return
        if self._folder is None:
            self._folder = str(scratch_folder("prunekit-journal"))
        path = Path(self._folder) / f"{len(self.saved)}.pt"
        torch.save(weight_of(module, name).detach().cpu(), path)
        self.saved[(id(module), name)] = (module, name, path)

    def restore(self) -> None:
        """Write every recorded weight back."""
        with torch.no_grad():
            for module, name, path in self.saved.values():
                leaf = weight_of(module, name)
                leaf.copy_(torch.load(path, weights_only=True).to(leaf.device))

    def close(self) -> None:
        """Delete the copies."""
        if self._folder is not None:
            remove_scratch(self._folder)
        self._folder = None
        self.saved.clear()


@runtime_checkable
class Method(Protocol):
    """What every pruning method implements.

    ``name`` is its registry name; ``prunes_experts`` says whether it prunes fused 3-D MoE expert weights
    (else they are listed as left dense). ``validate`` raises a one-line ``ValueError`` on anything the
    plan cannot do, before anything changes. ``apply_`` prunes ``model`` in place to ``sparsity`` (the
    round's target; per-layer amounts follow the plan's allocation), writing masks with
    :func:`prunekit.core.mask.set_mask_` and calling ``log.record(module)`` before rewriting a weight.
    """

    name: str
    prunes_experts: bool

    def validate(self, model: nn.Module, plan: PrunePlan) -> None: ...

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None: ...


METHODS: Registry[Callable[[], Method]] = Registry("method", key="method")


def register_method(name: str, config: type):
    """Decorator registering a method (a class, or any factory of :class:`Method` objects) under ``name``
    with its config class (a subclass of :class:`prunekit.methods.config.PruneConfig` whose ``method``
    field is ``Literal[name]``), the one way methods are registered."""

    def deco(factory):
        field_ = config.model_fields.get("method")
        if field_ is None or field_.default != name:
            raise ValueError(f"method {name!r}: its config {config.__name__} must have method: Literal[{name!r}]")
        METHODS.add(name, factory, config)
        return factory

    return deco
