"""One check for every fraction in prunekit, and the pydantic types built on it.

The vocabulary (see the README): ``sparsity`` is the fraction *removed* (weights, channels, heads,
neurons, layers, experts), ``keep`` the fraction *kept* (data selection, samplers, token keep
schedules), ``density`` the fraction of delta parameters kept when merging. Every one of them is
checked here: any real number (Python, NumPy or a 0-d tensor) is accepted; booleans, NaN and values
outside the range are refused with a message that names the argument and the range.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator

_RANGES = {
    # name: (low, high, low included, high included)
    "[0, 1)": (0.0, 1.0, True, False),
    "(0, 1]": (0.0, 1.0, False, True),
    "[0, 1]": (0.0, 1.0, True, True),
    "(0, 1)": (0.0, 1.0, False, False),
}


def as_real(value: Any, name: str) -> float:
    """``value`` as a Python float when it is a real number of any kind; else a TypeError naming ``name``."""
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or array
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_fraction(value: Any, name: str = "sparsity", interval: str = "[0, 1)", hint: str = "") -> float:
    """Return ``value`` as a float after checking it is a real number in ``interval``.

    ``interval`` is one of ``"[0, 1)"`` (sparsity), ``"(0, 1]"`` (keep, density), ``"[0, 1]"``,
    ``"(0, 1)"``. The error names the argument, the range and the value, plus ``hint`` when given.
    """
    low, high, low_in, high_in = _RANGES[interval]
    x = as_real(value, name)
    ok = not math.isnan(x) and (x >= low if low_in else x > low) and (x <= high if high_in else x < high)
    if not ok:
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}" + (f"; {hint}" if hint else ""))
    return x


def _validator(name: str, interval: str):
    def check(value: Any) -> Any:
        if value is None:
            return value
        return check_fraction(value, name, interval)

    return BeforeValidator(check)


# pydantic field types for configs: ``sparsity: Sparsity = 0.5``.
Sparsity = Annotated[float, _validator("sparsity", "[0, 1)")]
Keep = Annotated[float, _validator("keep", "(0, 1]")]
Density = Annotated[float, _validator("density", "(0, 1]")]
UnitInterval = Annotated[float, _validator("value", "[0, 1]")]


def keep_count(n: int, sparsity: float, round_to: int | None = None, minimum: int = 1) -> int:
    """How many of ``n`` units stay when ``sparsity`` of them go (the removed count rounded down),
    rounded to a multiple of ``round_to`` when given, and never fewer than ``minimum``
    (or ``round_to``)."""
    keep = n - math.floor(n * sparsity + 1e-9)
    if round_to:
        keep = min(n, max(round_to, int(round(keep / round_to)) * round_to))
    return max(minimum, keep)
