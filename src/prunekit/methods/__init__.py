"""Pruning methods, registered by name in :data:`METHODS`, each with its typed config beside it."""

from .alps import ALPSConfig
from .base import METHODS, Method, PruneLog, PrunePlan, register_method
from .config import BlockwiseConfig, PruneConfig, ScopeConfig
from .dimap import DimapConfig
from .dsnot import DSnoTConfig
from .lpvit import LPViTConfig
from .owl import owl  # noqa: F401  (registers the OWL allocation)
from .prune import PruneReport, apply_plan_, plan_prune, prune_
from .rd import RDConfig
from .ria import RIAConfig
from .score_based import GraspConfig, LrpConfig, MagnitudeConfig, RandomConfig, SnipConfig, SynflowConfig, TaylorConfig
from .sparsegpt import SparseGPTConfig
from .wanda import WandaConfig

__all__ = ["ALPSConfig", "BlockwiseConfig", "DSnoTConfig", "DimapConfig", "LPViTConfig", "GraspConfig", "LrpConfig", "METHODS", "MagnitudeConfig", "Method",
           "PruneConfig", "PruneLog", "PrunePlan", "PruneReport", "RDConfig", "RIAConfig", "RandomConfig", "ScopeConfig",
           "SnipConfig", "SparseGPTConfig", "SynflowConfig", "TaylorConfig", "WandaConfig", "apply_plan_",
           "plan_prune", "prune_", "register_method"]
