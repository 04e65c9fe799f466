"""Pruning methods, registered by name in :data:`METHODS`."""

from . import score_based  # noqa: F401  (registers the score-based methods)
from .base import METHODS, PrunePlan, register_method
from .prune import PruneReport, plan_prune, prune_

__all__ = ["METHODS", "PrunePlan", "PruneReport", "plan_prune", "prune_", "register_method"]
