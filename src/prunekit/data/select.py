"""Selecting which examples to keep from their scores (higher score = harder example).

Strategies, each registered in :data:`STRATEGIES` with its typed config (the settings a recipe's
data-selection stage holds): ``hardest`` and ``easiest`` (rank by score), ``random``,
``class_balanced`` (the same share of every class, hardest first within each), ``ccs``
(Coverage-centric Coreset Selection, Zheng et al., ICLR 2023) and ``density`` (concept-adaptive
budgets per cluster, Abbas et al., "Effective pruning of web-scale datasets based on complexity of
concept clusters", ICLR 2024).

    select(scores, keep=0.1, strategy="ccs", beta=0.2, seed=0)
    select(scores, CCSConfig(keep=0.1, beta=0.2))          # the same call
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal, Mapping

import numpy as np
from pydantic import PositiveInt

from ..core.config import Config
from ..core.registry import Registry
from ..core.fraction import Keep
from .budgets import NonNegativeInt, PositiveReal, UnitFraction, capped_allocation, dbp_budgets
from .checks import as_labels, as_scores, budget

__all__ = ["STRATEGIES", "SelectConfig", "select", "capped_allocation"]


class SelectConfig(Config):
    """What every selection holds: the fraction kept and the seed of its random draws."""

    needs_labels: ClassVar[bool] = False
    strategy: str
    keep: Keep
    seed: int = 0


class HardestConfig(SelectConfig):
    """Keep the highest scores (ties to the lower index)."""

    strategy: Literal["hardest"] = "hardest"


class EasiestConfig(SelectConfig):
    """Keep the lowest scores (ties to the lower index)."""

    strategy: Literal["easiest"] = "easiest"


class RandomConfig(SelectConfig):
    """Keep a seeded random subset; the scores are ignored."""

    strategy: Literal["random"] = "random"


class ClassBalancedConfig(SelectConfig):
    """The same share of every class (``labels=`` class ids), hardest first within each."""

    needs_labels: ClassVar[bool] = True
    strategy: Literal["class_balanced"] = "class_balanced"


class CCSConfig(SelectConfig):
    """Coverage-centric Coreset Selection (Zheng et al., ICLR 2023): cut the hardest ``beta``, then
    sample ``bins`` equal-width score strata, the smallest strata first."""

    strategy: Literal["ccs"] = "ccs"
    beta: UnitFraction = 0.1
    bins: PositiveInt = 50


class DensitySelectConfig(SelectConfig):
    """Concept-adaptive budgets (Abbas et al., ICLR 2024): ``scores`` are each example's cluster
    complexity, ``labels=`` the cluster ids; budgets solve the paper's quadratic program around
    softmax(C/``temperature``)·budget, at least ``min_keep`` per cluster; random within a cluster."""

    needs_labels: ClassVar[bool] = True
    strategy: Literal["density"] = "density"
    temperature: PositiveReal = 0.1
    min_keep: NonNegativeInt = 0


Strategy = Callable[[np.ndarray, int, Any, np.random.Generator, Any], np.ndarray]
STRATEGIES: Registry[Strategy] = Registry("selection strategy", key="strategy")


def _top(scores: np.ndarray, idx: np.ndarray, k: int, hardest: bool = True) -> np.ndarray:
    """The ``k`` of ``idx`` with the highest (or lowest) scores; ties go to the lower index."""
    key = -scores[idx] if hardest else scores[idx]
    return idx[np.argsort(key, kind="stable")[:k]]


@STRATEGIES.register("hardest", config=HardestConfig)
def _hardest(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, cfg: HardestConfig) -> np.ndarray:
    return _top(s, np.arange(len(s)), k, hardest=True)


@STRATEGIES.register("easiest", config=EasiestConfig)
def _easiest(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, cfg: EasiestConfig) -> np.ndarray:
    return _top(s, np.arange(len(s)), k, hardest=False)


@STRATEGIES.register("random", config=RandomConfig)
def _random(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, cfg: RandomConfig) -> np.ndarray:
    return rng.choice(len(s), size=k, replace=False)


@STRATEGIES.register("class_balanced", config=ClassBalancedConfig)
def _class_balanced(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator,
                    cfg: ClassBalancedConfig) -> np.ndarray:
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(classes))
    quota = capped_allocation(np.ones(len(classes)), sizes, k)
    return np.concatenate([_top(s, np.flatnonzero(inverse == c), quota[c]) for c in range(len(classes))])


@STRATEGIES.register("ccs", config=CCSConfig)
def _ccs(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, cfg: CCSConfig) -> np.ndarray:
    bins = cfg.bins
    n = len(s)
    cut = min(int(cfg.beta * n), n - k)  # never cut so many that the budget cannot be met
    order = np.argsort(-s, kind="stable")
    pool = np.sort(order[cut:])
    ps = s[pool]
    lo, hi = ps.min(), ps.max()
    width = (hi - lo) / bins if hi > lo else 1.0
    which = np.minimum(((ps - lo) / width).astype(np.int64), bins - 1)
    sizes = np.bincount(which, minlength=bins)
    # The paper's budget split: visit bins from the smallest up, each takes min(size, budget left / bins left).
    quota = np.zeros(bins, dtype=np.int64)
    left = k
    for i, b in enumerate(np.argsort(sizes, kind="stable")):
        quota[b] = min(sizes[b], left // (bins - i))
        left -= quota[b]
    chosen = [rng.choice(pool[which == b], size=quota[b], replace=False) for b in range(bins) if quota[b]]
    return np.concatenate(chosen)


@STRATEGIES.register("density", config=DensitySelectConfig)
def _density(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, cfg: DensitySelectConfig) -> np.ndarray:
    clusters, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(clusters))
    complexity = np.bincount(inverse, weights=s, minlength=len(clusters)) / sizes
    quota = dbp_budgets(complexity, sizes, k, temperature=cfg.temperature, min_keep=cfg.min_keep)
    return np.concatenate([rng.choice(np.flatnonzero(inverse == c), size=quota[c], replace=False)
                           for c in range(len(clusters)) if quota[c]])


def selection_config(keep: Any, strategy: str | None = None, seed: int | None = None,
                     **options: Any) -> SelectConfig:
    """The typed config of a selection given in either form: a config (or its dict) in ``keep``, with
    any keywords applied on top, or ``keep`` + ``strategy`` + options."""
    fields = {k: v for k, v in (("strategy", strategy), ("seed", seed)) if v is not None} | options
    if isinstance(keep, (Config, Mapping)):
        data = keep if isinstance(keep, Config) else {"strategy": "hardest", **keep}
        return STRATEGIES.parse_config(data, where="select", **fields)  # type: ignore[return-value]
    if keep is None:
        raise TypeError("select needs keep= (the fraction of examples to keep, in (0, 1]) or a selection config")
    data = {"strategy": strategy or "hardest", "keep": keep, **fields}
    return STRATEGIES.parse_config(data, where="select")  # type: ignore[return-value]


def select(scores: Any, keep: float | SelectConfig | Mapping[str, Any] | None = None,
           strategy: str | None = None, labels: Any = None, seed: int | None = None,
           **options: Any) -> np.ndarray:
    """Indices (sorted, unique, int64) of the examples to keep, ``round(keep·N)`` of them (at least one).

    ``keep`` is the fraction kept, in (0, 1], or a selection config (``CCSConfig(keep=0.1)``, or its
    dict ``{"strategy": "ccs", "keep": 0.1}``) — the two forms are the same call. ``scores``: one float
    per example, higher = harder. ``labels``: class ids for ``class_balanced``; cluster ids for
    ``density`` (whose ``scores`` are the concept complexity of each example's cluster, as
    ``score(method="density")`` returns). Options by strategy: ``beta`` and ``bins`` (``ccs``),
    ``temperature`` and ``min_keep`` (``density``); any other is an error naming the allowed ones.
    Deterministic under ``seed`` (default 0).
    """
    cfg = selection_config(keep, strategy, seed, **options)
    s = as_scores(scores)
    n = len(s)
    if labels is not None:
        labels = as_labels(labels, n, "labels" if cfg.strategy != "density" else "labels (cluster ids)")
    elif cfg.needs_labels:
        what = "class labels" if cfg.strategy == "class_balanced" else "cluster ids (from concept_clusters)"
        raise ValueError(f"strategy {cfg.strategy!r} needs labels=: pass the {what}, one per example")
    k = budget(cfg.keep, n)
    rng = np.random.default_rng(cfg.seed)
    chosen = STRATEGIES.get(cfg.strategy)(s, k, labels, rng, cfg)
    out = np.unique(np.asarray(chosen, dtype=np.int64))
    if len(out) != k:
        raise RuntimeError(f"internal error: strategy {cfg.strategy!r} chose {len(out)} of {k} examples")
    return out
