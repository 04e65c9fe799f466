"""Importance criteria, one file each, registered by name in :data:`CRITERIA`."""

from . import dimap, grasp, lrp, magnitude, random, snip, synflow, taylor  # noqa: F401  (registers them)
from .base import CRITERIA, Criterion, ScoreContext, register_criterion

__all__ = ["CRITERIA", "Criterion", "ScoreContext", "register_criterion"]
