"""Fewer experts in mixture-of-experts models: remove the experts that score lowest on calibration tokens
(router frequency, REAP, reconstruction error) or merge them (M-SMoE), one MoE layer at a time.

    from prunekit.experts import prune_experts_
    report = prune_experts_(model, 0.5, score="reap", calibration=windows)
    model.save_pretrained("fewer-experts/")
"""

from .config import EXPERT_METHODS, ExpertMergeConfig, ExpertPruneConfig
from .find import find_moe_layers
from .layout import MoeLayer, Routing, routed_output
from .prune import ExpertLayerReport, ExpertPlan, ExpertReport, merge_experts_, plan_experts, prune_experts_
from .score import LayerStats, layer_stats, reconstruction_scores
from .tiny import MOE_FAMILIES, tiny_moe, tiny_moe_config

__all__ = [
    "EXPERT_METHODS", "ExpertLayerReport", "ExpertMergeConfig", "ExpertPlan", "ExpertPruneConfig", "ExpertReport",
    "LayerStats", "MOE_FAMILIES", "MoeLayer", "Routing", "find_moe_layers", "layer_stats", "merge_experts_",
    "plan_experts", "prune_experts_", "reconstruction_scores", "routed_output", "tiny_moe", "tiny_moe_config",
]
