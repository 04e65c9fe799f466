"""Input checks shared by the data-pruning functions: every one raises a ValueError that says
what was wrong and what was expected, before anything is computed or written."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_scores(scores: Any, n: int | None = None) -> np.ndarray:
    """``scores`` as a 1-D float64 array; rejects NaN/inf and a length other than ``n``."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be a 1-D array (one float per example), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("scores is empty: score at least one example")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"scores contain {int(bad.sum())} NaN or infinite values (first at indices {first}); "
                         "re-run the scoring or drop those examples")
    if n is not None and arr.size != n:
        raise ValueError(f"scores has {arr.size} entries but the data set has {n} examples; "
                         "score the same data set you select from")
    return arr


def as_labels(labels: Any, n: int, what: str = "labels") -> np.ndarray:
    """``labels`` as a 1-D int64 array of length ``n`` (integer class or cluster ids)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"{what} must be a 1-D array with one entry per example ({n}), got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what} must be integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_keep(keep: float) -> float:
    """``keep`` must be a fraction in (0, 1]."""
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}") from None
    if not (0.0 < value <= 1.0):
        raise ValueError(f"keep must be a fraction in (0, 1] (e.g. 0.1 keeps 10%), got {keep!r}")
    return value


def budget(keep: float, n: int) -> int:
    """How many of ``n`` examples a fraction ``keep`` keeps: round(keep·n), at least 1."""
    return max(1, min(n, int(round(check_keep(keep) * n))))
