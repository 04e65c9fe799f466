"""Sparsity schedules: how sparse the model should be at a given training step.

The cubic schedule is Zhu & Gupta's, "To prune, or not to prune" (2017):
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3`` for ``t0 <= t <= t1``, pruning fast
early (when the network has redundancy to spare) and slowly near the end.
"""

from __future__ import annotations

from ..core.fraction import check_fraction

from typing import Callable, Union

ScheduleFn = Callable[[float], float]
ScheduleSpec = Union[str, ScheduleFn]


def cubic(progress: float) -> float:
    """Fraction of the way from the initial to the final sparsity after ``progress`` ∈ [0, 1] (Zhu & Gupta)."""
    return 1 - (1 - progress) ** 3


def linear(progress: float) -> float:
    """Fraction of the way from the initial to the final sparsity: proportional to ``progress``."""
    return progress


def constant(progress: float) -> float:
    """The final sparsity from the first step: what ISS-P and iterative hard thresholding hold while they train."""
    return 1.0


SCHEDULES: dict[str, ScheduleFn] = {"cubic": cubic, "linear": linear, "constant": constant}


def resolve_schedule(schedule: ScheduleSpec) -> ScheduleFn:
    """A schedule function from a name (``"cubic"``, ``"linear"``) or a callable progress → fraction."""
    if callable(schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]
    raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a callable progress -> fraction, got {schedule!r}")


def check_sparsity(value: float, name: str) -> float:
    """``value`` as a float in [0, 1), else an error naming ``name`` (:func:`prunekit.core.fraction.check_fraction`)."""
    return check_fraction(value, name, "[0, 1)")


def check_window(start_step: int, end_step: int, every: int) -> None:
    """Raise a ValueError for a pruning window that is empty, reversed or negative, or a bad ``every``."""
    for name, v in (("start_step", start_step), ("end_step", end_step), ("every", every)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must come after start_step ({start_step})")
    if every < 1:
        raise ValueError(f"every must be a positive number of steps, got {every}")


def sparsity_at(step: int, *, initial: float, final: float, start_step: int, end_step: int,
                schedule: ScheduleFn = cubic) -> float:
    """The target sparsity at ``step``: ``initial`` before ``start_step``, ``final`` from ``end_step`` on."""
    if step < start_step:
        return initial
    progress = min(1.0, (step - start_step) / (end_step - start_step))
    frac = float(schedule(progress))
    if not 0 <= frac <= 1 + 1e-9:
        raise ValueError(f"the schedule returned {frac} at progress {progress}; it must map [0, 1] into [0, 1]")
    return initial + (final - initial) * min(frac, 1.0)
