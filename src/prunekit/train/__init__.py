"""Training with pruning: loops, schedules and recovery."""

from .loop import fit

__all__ = ["fit"]
