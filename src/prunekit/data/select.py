"""Selecting which examples to keep from their scores (higher score = harder example).

Strategies: ``hardest`` and ``easiest`` (rank by score), ``random``, ``class_balanced`` (the same
share of every class, hardest first within each), ``ccs`` (Coverage-centric Coreset Selection,
Zheng et al., ICLR 2023) and ``density`` (concept-adaptive rates per cluster, Abbas et al.,
"Effective pruning of web-scale datasets based on complexity of concept clusters", ICLR 2024).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .checks import as_labels, as_scores, budget

STRATEGIES = ("hardest", "easiest", "random", "class_balanced", "ccs", "density")
_NEEDS_LABELS = ("class_balanced", "density")


def _top(scores: np.ndarray, idx: np.ndarray, k: int, hardest: bool = True) -> np.ndarray:
    """The ``k`` of ``idx`` with the highest (or lowest) scores; ties go to the lower index."""
    key = -scores[idx] if hardest else scores[idx]
    return idx[np.argsort(key, kind="stable")[:k]]


def capped_allocation(weights: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` items over groups in proportion to ``weights``, never giving a group more than
    its size; what a full group cannot take goes to the others. Integer result summing to ``total``."""
    weights = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if total > sizes.sum():
        raise ValueError(f"cannot take {total} items from groups holding {int(sizes.sum())}")
    share = np.zeros(len(sizes), dtype=np.float64)
    open_ = sizes > 0
    left = float(total)
    while left > 1e-9 and open_.any():
        w = np.where(open_, weights, 0.0)
        w = w / w.sum() if w.sum() > 0 else open_ / open_.sum()
        proposal = share + left * w
        over = open_ & (proposal >= sizes)
        if not over.any():
            share = proposal
            break
        share[over] = sizes[over]
        open_ &= ~over
        left = total - share.sum()
    alloc = np.floor(share).astype(np.int64)
    rest = total - int(alloc.sum())
    if rest > 0:  # largest remainders first, among groups with room
        frac = np.where(alloc < sizes, share - alloc, -1.0)
        for g in np.argsort(-frac, kind="stable")[:rest]:
            alloc[g] += 1
    return alloc


def _hardest(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    return _top(s, np.arange(len(s)), k, hardest=True)


def _easiest(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    return _top(s, np.arange(len(s)), k, hardest=False)


def _random(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    return rng.choice(len(s), size=k, replace=False)


def _class_balanced(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(classes))
    quota = capped_allocation(np.ones(len(classes)), sizes, k)
    return np.concatenate([_top(s, np.flatnonzero(inverse == c), quota[c]) for c in range(len(classes))])


def _ccs(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    beta, bins = float(opts.get("beta", 0.1)), int(opts.get("bins", 50))
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta (the hardest fraction CCS cuts) must be in [0, 1), got {beta}")
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    n = len(s)
    cut = min(int(beta * n), n - k)  # never cut so many that the budget cannot be met
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


def _density(s: np.ndarray, k: int, labels: Any, rng: np.random.Generator, opts: dict) -> np.ndarray:
    temperature = float(opts.get("temperature", 0.1))
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    clusters, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(clusters))
    complexity = np.bincount(inverse, weights=s, minlength=len(clusters)) / sizes
    z = (complexity - complexity.max()) / temperature
    weights = np.exp(z) / np.exp(z).sum()  # softmax(C / τ): complex concepts keep more
    quota = capped_allocation(weights, sizes, k)
    return np.concatenate([rng.choice(np.flatnonzero(inverse == c), size=quota[c], replace=False)
                           for c in range(len(clusters)) if quota[c]])


_TABLE: dict[str, Callable[..., np.ndarray]] = {
    "hardest": _hardest, "easiest": _easiest, "random": _random,
    "class_balanced": _class_balanced, "ccs": _ccs, "density": _density,
}


def select(scores: Any, keep: float, strategy: str = "hardest", labels: Any = None, seed: int = 0,
           **options: Any) -> np.ndarray:
    """Indices (sorted, unique, int64) of the examples to keep, ``round(keep·N)`` of them.

    ``scores``: one float per example, higher = harder. ``labels``: class ids for
    ``class_balanced``; cluster ids for ``density`` (whose ``scores`` are the concept complexity of
    each example's cluster, as ``score(method="density")`` returns). Options: ``beta`` (CCS: the
    hardest fraction cut first, default 0.1) and ``bins`` (CCS strata, default 50) from
    Zheng et al. 2023; ``temperature`` (density: τ of softmax(C/τ), default 0.1) from Abbas et al. 2024.
    Deterministic under ``seed``.
    """
    if strategy not in _TABLE:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    s = as_scores(scores)
    n = len(s)
    if labels is not None:
        labels = as_labels(labels, n, "labels" if strategy != "density" else "labels (cluster ids)")
    elif strategy in _NEEDS_LABELS:
        what = "class labels" if strategy == "class_balanced" else "cluster ids (from concept_clusters)"
        raise ValueError(f"strategy {strategy!r} needs labels=: pass the {what}, one per example")
    allowed = {"ccs": {"beta", "bins"}, "density": {"temperature"}}.get(strategy, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"strategy {strategy!r} takes no option(s) {sorted(unknown)}; it takes {sorted(allowed) or 'none'}")
    k = budget(keep, n)
    rng = np.random.default_rng(seed)
    chosen = _TABLE[strategy](s, k, labels, rng, options)
    out = np.unique(np.asarray(chosen, dtype=np.int64))
    assert len(out) == k, f"internal error: {strategy} chose {len(out)} of {k}"
    return out
