"""Typed configs of the merge methods, one class per method, registered in :data:`MERGE_METHODS`.

Vocabulary (the papers'): ``density`` is the fraction of each delta ``θ_ft − θ_base`` that is *kept*
(DARE's drop rate is ``p = 1 − density``); ``weights`` are the per-model coefficients of the deltas;
``scale`` is the λ that multiplies the merged delta before it is added to the base.

``semantics="paper"`` (the default) follows the papers; ``semantics="mergekit"`` reproduces
mergekit's arithmetic for the same method name (see docs/merge.md for the table of differences:
DARE's rescaling, TIES' trim scope and weighted sign election, DELLA's ε, the disjoint sum of
mergekit's ``dare_ties``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..core.config import Config
from ..core.fraction import Density
from ..core.registry import Registry

Semantics = Literal["paper", "mergekit"]


_F32_MAX = 3.4028234663852886e38  # merges compute in float32: a coefficient beyond it is inf there


def _in_float32(x: float) -> bool:
    import math

    return math.isfinite(x) and abs(x) <= _F32_MAX


class MergeConfig(Config):
    """Settings every merge method shares."""

    weights: list[float] | None = Field(
        default=None, description="one coefficient per fine-tuned model (default 1.0 each)")
    scale: float = Field(default=1.0, description="λ: the merged delta is multiplied by it before it is added")
    seed: int = Field(default=0, description="seed of the random drops; each tensor's generator derives from it and the tensor's name")
    semantics: Semantics = "paper"
    skip: list[str] = Field(default_factory=list, description="glob patterns of tensors copied from the base unchanged")

    # What the method does: class-level facts, not settings.
    sparsify: ClassVar[str | None] = None  # "dare" | "magnitude" | "della" | None
    elect: ClassVar[bool] = False  # TIES' sign election + disjoint merge
    average: ClassVar[bool] = False  # plain weighted average of the models (linear)

    @field_validator("weights")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("weights must name one number per fine-tuned model, got an empty list")
            if any(not _in_float32(w) for w in v):
                raise ValueError(f"weights must be finite numbers within float32's range (|w| ≤ {_F32_MAX:.3g}), got {v}")
        return v

    @field_validator("scale")
    @classmethod
    def _finite_scale(cls, v: float) -> float:
        if not _in_float32(v):
            raise ValueError(f"scale must be a finite number within float32's range (|λ| ≤ {_F32_MAX:.3g}), got {v}")
        return v

    def weight_list(self, n_models: int) -> list[float]:
        """One weight per model: the configured ones (checked against ``n_models``) or 1.0 each."""
        if self.weights is None:
            return [1.0] * n_models
        if len(self.weights) != n_models:
            raise ValueError(f"weights has {len(self.weights)} entries but {n_models} fine-tuned models are merged; "
                             "give one weight per model")
        return list(self.weights)


class _Sparse(MergeConfig):
    density: Density = Field(description="fraction of each delta kept, in (0, 1]")


class _Trim(_Sparse):
    trim_scope: Literal["model", "tensor"] | None = Field(
        default=None,
        description="where the top-density magnitudes are ranked: over the whole model's delta (TIES' code; the "
                    "paper default) or tensor by tensor (mergekit's default)")

    def scope(self) -> str:
        """The trim scope in effect (the semantics' default when unset)."""
        if self.trim_scope is not None:
            return self.trim_scope
        return "model" if self.semantics == "paper" else "tensor"


class LinearConfig(MergeConfig):
    """Weighted average of the models, ``Σ wₜ θₜ / Σ wₜ`` (simple averaging with the default weights)."""

    method: Literal["linear"] = "linear"
    average: ClassVar[bool] = True


class TaskArithmeticConfig(MergeConfig):
    """Task arithmetic (Ilharco et al., 2023): ``θ_base + λ Σ wₜ δₜ``."""

    method: Literal["task_arithmetic"] = "task_arithmetic"


class DareConfig(_Sparse):
    """DARE (Yu et al., 2024) with task arithmetic: drop each delta entry with probability ``p = 1 − density``
    and rescale the survivors by ``1/(1 − p)``; then ``θ_base + λ Σ wₜ δ̃ₜ``."""

    method: Literal["dare_linear"] = "dare_linear"
    rescale: bool = Field(default=True, description="rescale the kept entries (paper: ×1/density; mergekit: match the L1 norm)")
    q: float | Literal["search"] | None = Field(
        default=None,
        description="DAREx-q (Deng et al., 2024): the kept entries are multiplied by 1/q instead of 1/density; a "
                    "number in (0, 1], or \"search\": per fine-tune, the q that changes its outputs on calibration "
                    "text least (prunekit.merge.darex); None is DARE's 1/density")
    calib: str = Field(default="pydocs", description="q=\"search\": calibration text (a name, a file or a folder)")
    nsamples: int = Field(default=4, ge=1, description="q=\"search\": calibration windows")
    seqlen: int = Field(default=256, ge=2, description="q=\"search\": tokens per calibration window")
    sparsify: ClassVar[str | None] = "dare"

    @field_validator("q")
    @classmethod
    def _q_range(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, (int, float)) and not 0 < v <= 1:
            raise ValueError(f"q must be in (0, 1] (the kept entries are multiplied by 1/q) or \"search\", got {v}")
        return v

    @model_validator(mode="after")
    def _q_alone(self) -> "DareConfig":
        if self.q is not None and (not self.rescale or self.semantics != "paper"):
            raise ValueError("q replaces DARE's rescaling by 1/density: it cannot be combined with rescale=False "
                             "(--no-rescale) or semantics=\"mergekit\" (the L1 rescale); drop one of them")
        return self

    def searches_q(self) -> bool:
        """Whether the merge searches DAREx-q's q on calibration text (``q="search"``)."""
        return self.q == "search" and self.density < 1


class DareTiesConfig(DareConfig):
    """DARE drops, then TIES' sign election and disjoint merge of the survivors."""

    method: Literal["dare_ties"] = "dare_ties"  # type: ignore[assignment]
    elect: ClassVar[bool] = True


class TiesConfig(_Trim):
    """TIES-Merging (Yadav et al., 2023): trim each delta to its top-``density`` magnitudes, elect each entry's
    sign by the summed trimmed deltas, average the entries that agree with it (disjoint mean), scale by λ."""

    method: Literal["ties"] = "ties"
    sparsify: ClassVar[str | None] = "magnitude"
    elect: ClassVar[bool] = True


class MagnitudeConfig(_Trim):
    """Magnitude pruning of the deltas: keep each delta's top-``density`` magnitudes, then task arithmetic."""

    method: Literal["magnitude"] = "magnitude"
    sparsify: ClassVar[str | None] = "magnitude"


class DellaConfig(_Sparse):
    """DELLA-Merging (Deep et al., 2024): MAGPRUNE drops each row's entries with probabilities ranked by
    magnitude (the largest least likely to go), rescales each survivor by ``1/(1 − pᵢ)``, then TIES' election
    and disjoint mean, scaled by λ.

    ``epsilon`` (paper): drop probabilities span ``[p − ε/2, p + ε/2]`` around ``p = 1 − density``. With
    ``semantics="mergekit"`` it is mergekit's half-width: keep probabilities span ``density ± ε``.
    """

    method: Literal["della"] = "della"
    epsilon: float = Field(default=0.1, ge=0.0, description="spread of the drop probabilities (see the class docstring)")
    rescale: bool = True
    sparsify: ClassVar[str | None] = "della"
    elect: ClassVar[bool] = True

    @model_validator(mode="after")
    def _range(self) -> "DellaConfig":
        lo, hi = self.keep_range()
        if lo < 0 or hi > 1:
            half = "ε" if self.semantics == "mergekit" else "ε/2"
            limit = min(self.density, 1 - self.density) * (1 if self.semantics == "mergekit" else 2)
            raise ValueError(
                f"epsilon={self.epsilon} puts keep probabilities outside [0, 1] at density {self.density} "
                f"(density ± {half} = [{lo:.3g}, {hi:.3g}]); use epsilon ≤ {limit:.3g}")
        return self

    def keep_range(self) -> tuple[float, float]:
        """The smallest and largest keep probabilities (for the smallest and largest magnitudes of a row)."""
        half = self.epsilon if self.semantics == "mergekit" else self.epsilon / 2
        return self.density - half, self.density + half


class DellaLinearConfig(DellaConfig):
    """DELLA's drops without the sign election: ``θ_base + λ Σ wₜ δ̃ₜ``."""

    method: Literal["della_linear"] = "della_linear"  # type: ignore[assignment]
    elect: ClassVar[bool] = False


MERGE_METHODS: Registry[type[MergeConfig]] = Registry("merge method", key="method")
for _cls in (LinearConfig, TaskArithmeticConfig, DareConfig, DareTiesConfig, TiesConfig, MagnitudeConfig,
             DellaConfig, DellaLinearConfig):
    MERGE_METHODS.add(_cls.model_fields["method"].default, _cls, config=_cls)


def merge_config(method: str | MergeConfig | dict, **fields) -> MergeConfig:
    """The config for ``method`` (a name, a dict naming ``method``, or a config) with ``fields`` applied."""
    if isinstance(method, str):
        return MERGE_METHODS.parse_config({"method": method}, **fields)  # type: ignore[return-value]
    return MERGE_METHODS.parse_config(method, **fields)  # type: ignore[return-value]
