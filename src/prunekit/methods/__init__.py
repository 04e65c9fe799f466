"""Pruning methods, registered by name in :data:`METHODS`."""

from . import alps, dsnot, owl, ria, score_based, sparsegpt, wanda  # noqa: F401  (register the methods and the OWL allocation)
from .base import METHODS, PrunePlan, register_method
from .prune import PruneReport, plan_prune, prune_

__all__ = ["METHODS", "PrunePlan", "PruneReport", "plan_prune", "prune_", "register_method"]
