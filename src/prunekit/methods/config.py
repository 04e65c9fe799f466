"""The shared bases of the methods' typed configs: what ``prune_`` takes, as data.

``PruneConfig`` holds what every method shares (sparsity, pattern, allocation and its options,
scope, iterations, seed); :class:`BlockwiseConfig` adds the block engine's ``batch_size`` and
``device``. Each method's own config subclasses one of them beside its algorithm (``WandaConfig`` in
``methods/wanda.py``, ``SparseGPTConfig`` in ``methods/sparsegpt.py``, ``GraspConfig`` in
``methods/score_based.py``, …) and holds its options and their only defaults; ``prunekit.methods``
exports them all.
``prune_(model, config)`` and ``prune_(model, "wanda", 0.5, batch_size=4)`` are the same call: the
keyword form builds the config. A setting a method does not have is an error naming the allowed
ones; a setting that does not apply (an allocation with an N:M pattern, ``floor`` without
``global_floor``) is an error saying why.

    cfg = WandaConfig(sparsity=0.5, allocation="owl", owl_lambda=0.1)
    cfg.to_yaml()   # method: wanda / sparsity: 0.5 / pattern: unstructured / allocation: owl / ...
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..core.allocate import ALLOCATIONS
from ..core.config import Config
from ..core.fraction import Sparsity
from ..core.pattern import parse_pattern
from ..core.scope import PRUNABLE_TYPES, Scope

# Which allocation each allocation option belongs to.
ALLOCATION_OPTIONS: dict[str, str] = {"floor": "global_floor", "power": "erk", "owl_m": "owl", "owl_lambda": "owl"}

_TYPE_NAMES = {t.__name__: t for t in PRUNABLE_TYPES} | {"Conv1D": None, "Embedding": nn.Embedding,
                                                          "ConvTranspose2d": nn.ConvTranspose2d}


class ScopeConfig(Config):
    """The serialisable form of :class:`prunekit.core.scope.Scope`: module types by name, name globs."""

    types: list[str] = Field(default_factory=lambda: [t.__name__ for t in PRUNABLE_TYPES])
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    skip_first_conv: bool = True
    skip_output: bool = True

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in _TYPE_NAMES]
        if unknown:
            raise ValueError(f"unknown module type(s) {unknown}; known: {', '.join(sorted(_TYPE_NAMES))}")
        return v

    def to_scope(self) -> Scope:
        """The runtime :class:`Scope`."""
        types = tuple(t for t in (_TYPE_NAMES[n] for n in self.types) if t is not None)
        if "Conv1D" in self.types and nn.Linear not in types:  # GPT-2's Conv1D rides along with Linear
            types = (*types, nn.Linear)
        return Scope(types=types, include=self.include, exclude=tuple(self.exclude),
                     skip_first_conv=self.skip_first_conv, skip_output=self.skip_output)

    @classmethod
    def from_any(cls, scope: Any) -> "ScopeConfig | None":
        """A ScopeConfig from the forms ``prune_(scope=...)`` takes: None, a glob, globs, a dict, a Scope."""
        if scope is None or isinstance(scope, ScopeConfig):
            return scope
        if isinstance(scope, str):
            return cls(include=[scope])
        if isinstance(scope, Scope):
            names = []
            for t in scope.types:
                if _TYPE_NAMES.get(t.__name__) is not t:
                    raise ValueError(f"scope type {t.__name__} cannot be named in a config; known: "
                                     f"{', '.join(sorted(_TYPE_NAMES))}; select custom modules with include= globs")
                names.append(t.__name__)
            return cls(types=names, include=None if scope.include is None else list(scope.include),
                       exclude=list(scope.exclude), skip_first_conv=scope.skip_first_conv,
                       skip_output=scope.skip_output)
        if isinstance(scope, dict):
            return cls.parse(scope, where="scope")
        if isinstance(scope, (list, tuple)) and all(isinstance(g, str) for g in scope):
            return cls(include=list(scope))
        raise TypeError(f"scope must be a Scope, a dict, a glob or a list of globs, got {type(scope).__name__}")


class PruneConfig(Config):
    """Settings every ``prune_`` method shares."""

    method: str
    sparsity: Sparsity | None = None
    pattern: str = "unstructured"
    allocation: str = "uniform"
    scope: ScopeConfig | None = None
    iterations: int = Field(1, ge=1)
    seed: int = 0
    max_batches: int | None = Field(None, ge=1)
    strict: bool = False
    floor: float | None = Field(None, ge=0, le=1)
    power: float | None = None
    owl_m: float | None = Field(None, gt=0)
    owl_lambda: float | None = Field(None, ge=0, lt=1)

    needs_calibration: ClassVar[bool] = False  # True: the method reads calibration text (token ids)

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, v: Any) -> Any:
        return ScopeConfig.from_any(v)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(parse_pattern(v))

    @model_validator(mode="after")
    def _consistent(self) -> "PruneConfig":
        pat = parse_pattern(self.pattern)
        fixed = pat.fixed_sparsity
        if fixed is not None:
            if self.sparsity is not None and abs(self.sparsity - fixed) > 1e-9:
                raise ValueError(f"pattern {pat} implies sparsity {fixed}; got sparsity={self.sparsity} "
                                 "(omit it or match it)")
            if self.allocation != "uniform":
                raise ValueError(f"allocation={self.allocation!r} does not apply to the N:M pattern {pat}, which "
                                 "prunes every layer to the same sparsity; leave allocation out")
        else:
            ALLOCATIONS.get(self.allocation)
        for option, owner in ALLOCATION_OPTIONS.items():
            if getattr(self, option) is not None and self.allocation != owner:
                raise ValueError(f"{option}= is an option of allocation={owner!r}, but allocation={self.allocation!r}")
        return self

    def target_sparsity(self) -> float:
        """The sparsity to reach: the given one, or the one the N:M pattern implies."""
        fixed = parse_pattern(self.pattern).fixed_sparsity
        if self.sparsity is None:
            if fixed is None:
                raise ValueError(f"sparsity is required for pattern {self.pattern}; pass a number in [0, 1)")
            return fixed
        return self.sparsity

    def allocation_options(self) -> dict[str, Any]:
        """The allocation's own options that were set."""
        return {k: getattr(self, k) for k in ALLOCATION_OPTIONS if getattr(self, k) is not None}


class BlockwiseConfig(PruneConfig):
    """Options of the block-by-block engine that calibrated methods share."""

    needs_calibration: ClassVar[bool] = True

    batch_size: int = Field(8, ge=1)
    device: str | None = None
