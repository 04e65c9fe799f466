"""How many examples each group keeps: proportional splits capped by group size, and the budgets of
density-based pruning (Abbas et al., "Effective pruning of web-scale datasets based on complexity of
concept clusters", ICLR 2024).

Also the pydantic field types the data configs share.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, Field, ValidationInfo

from ..core.fraction import as_real, check_fraction


def _positive_real(value: Any, info: ValidationInfo) -> float:
    name = info.field_name or "value"
    x = as_real(value, name)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def _unit_fraction(value: Any, info: ValidationInfo) -> float:
    return check_fraction(value, info.field_name or "value", "[0, 1)")


def _whole(value: Any, info: ValidationInfo) -> int:
    name = info.field_name or "value"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


# Config field types: a finite number > 0 (temperatures), a fraction in [0, 1) (CCS's beta), a count >= 0.
PositiveReal = Annotated[float, BeforeValidator(_positive_real)]
UnitFraction = Annotated[float, BeforeValidator(_unit_fraction)]
NonNegativeInt = Annotated[int, BeforeValidator(_whole), Field(ge=0)]


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
    return _round_to_total(share, sizes, total)


def _round_to_total(share: np.ndarray, upper: np.ndarray, total: int, lower: np.ndarray | None = None) -> np.ndarray:
    """Integers summing to ``total`` within [``lower``, ``upper``]: floors of ``share``, then one more
    each for the largest remainders (ties to the lower group) among groups below ``upper``."""
    low = np.zeros(len(share), dtype=np.int64) if lower is None else np.asarray(lower, dtype=np.int64)
    alloc = np.clip(np.floor(share + 1e-9).astype(np.int64), low, upper)
    rest = total - int(alloc.sum())
    if rest > 0:
        frac = np.where(alloc < upper, share - alloc, -np.inf)
        for g in np.argsort(-frac, kind="stable")[:rest]:
            alloc[g] += 1
    elif rest < 0:  # float rounding pushed the floors past the total: take back from the smallest remainders
        frac = np.where(alloc > low, share - alloc, np.inf)
        for g in np.argsort(frac, kind="stable")[:-rest]:
            alloc[g] -= 1
    return alloc


def softmax_weights(complexity: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(C / temperature), computed stably."""
    z = np.asarray(complexity, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def dbp_budgets(complexity: np.ndarray, sizes: np.ndarray, total: int, temperature: float = 0.1,
                min_keep: int = 1) -> np.ndarray:
    """Per-cluster keep counts of density-based pruning: the integer solution of the paper's quadratic
    program  min ‖x − softmax(C/τ)·total‖²  s.t.  Σx = total,  min(min_keep, size) ≤ x ≤ size.

    The continuous optimum is a Euclidean projection, x = clip(p·total + λ, lower, size) with the one λ
    that makes the sum right (found by bisection, to float precision); it is rounded by largest
    remainders so that the counts sum to ``total`` exactly. Empty clusters get 0. (The authors' code
    solves the same program with OSQP and rounds each entry, so its total can be off by a few.)
    """
    c = np.asarray(complexity, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if c.shape != sizes.shape or c.ndim != 1:
        raise ValueError(f"complexity and sizes must be 1-D of the same length, got {c.shape} and {sizes.shape}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    full = sizes > 0
    if not np.all(np.isfinite(c[full])):
        raise ValueError("cluster complexities contain NaN or infinite values")
    if not 0 <= total <= int(sizes.sum()):
        raise ValueError(f"cannot keep {total} examples of {int(sizes.sum())}")
    lower = np.where(full, np.minimum(min_keep, sizes), 0).astype(np.float64)
    if lower.sum() > total:
        raise ValueError(f"keeping at least {min_keep} of each of {int(full.sum())} clusters needs "
                         f"{int(lower.sum())} examples, more than the {total} kept; lower min_keep or the "
                         "number of clusters, or keep more")
    p = np.zeros(len(c))
    p[full] = softmax_weights(c[full], temperature)
    target = p * total
    upper = sizes.astype(np.float64)

    def kept(lam: float) -> float:
        return float(np.clip(target + lam, lower, upper).sum())

    lo, hi = float((lower - target).min()) - 1.0, float((upper - target).max()) + 1.0
    for _ in range(200):  # f(λ) is non-decreasing and piecewise linear: bisect to float precision
        mid = 0.5 * (lo + hi)
        if kept(mid) < total:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    share = np.clip(target + hi, lower, upper)
    return _round_to_total(share, sizes, total, lower)
