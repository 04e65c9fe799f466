"""Input checks shared by the data-pruning functions: every one raises a ValueError that says
what was wrong and what was expected, before anything is computed or written."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.fraction import check_fraction


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


def check_keep(keep: Any, name: str = "keep") -> float:
    """``keep`` must be a real number in (0, 1] (the fraction kept); booleans and NaN are refused."""
    return check_fraction(keep, name, "(0, 1]", hint="e.g. 0.1 keeps 10% of the examples")


def budget(keep: float, n: int) -> int:
    """How many of ``n`` examples a fraction ``keep`` keeps: round(keep·n), at least 1."""
    return max(1, min(n, int(round(check_keep(keep) * n))))


def check_finite_scores(scores: np.ndarray, method: str) -> np.ndarray:
    """Raise when a score came out NaN or infinite (a diverged proxy, or inputs that slipped through)."""
    bad = ~np.isfinite(scores)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{method} scores are NaN or infinite for {int(bad.sum())} of {len(scores)} examples "
                         f"(first at indices {first}): the proxy model diverged; lower lr= or check the data")
    return scores


def check_labelled(dataset: Any, model: Any, method: str, batch_size: int = 1024) -> None:
    """Check a data set of (input, label) pairs before training proxies on it: every input finite,
    every label an integer class id in [0, classes of ``model``). One pass over the data; the model
    is run once (eval mode, no gradients) on the first input to learn its number of classes."""
    import torch
    from torch.utils.data import DataLoader

    from ..infra.calling import call_model, output_tensor

    classes = None
    start = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        x, y = batch[0], batch[1]
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
            raise ValueError(f"{method} needs integer class labels (one per example); the labels are "
                             f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            finite = torch.isfinite(x.reshape(len(x), -1)).all(1)
            if not finite.all():
                bad = (start + torch.nonzero(~finite).flatten()[:5]).tolist()
                raise ValueError(f"{method}: inputs of {int((~finite).sum())} examples in this batch hold NaN or "
                                 f"infinite values (first at indices {bad}); clean or drop them before scoring")
        if classes is None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                classes = output_tensor(call_model(model, x[:1])).shape[-1]
            model.train(was_training)
        wrong = (y < 0) | (y >= classes)
        if wrong.any():
            i = int(torch.nonzero(wrong)[0])
            raise ValueError(f"{method}: label {int(y[i])} of example {start + i} is outside [0, {classes}), the "
                             f"classes of the model model_fn builds; use labels 0..{classes - 1} or a model with "
                             "more outputs")
        start += len(y)
