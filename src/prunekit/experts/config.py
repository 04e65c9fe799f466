"""Typed configs of expert pruning and expert merging, registered in :data:`EXPERT_METHODS`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.config import Config
from ..core.fraction import Sparsity
from ..core.registry import Registry

ExpertScore = Literal["frequency", "reap", "reconstruction"]
EXPERT_SCORE_NAMES: tuple[str, ...] = ("frequency", "reap", "reconstruction")


class ExpertPruneConfig(Config):
    """Remove a fraction of the routed experts of every MoE layer, those that score lowest on calibration tokens."""

    method: Literal["expert_prune"] = "expert_prune"
    sparsity: Sparsity = Field(description="fraction of each layer's routed experts removed, in [0, 1)")
    score: ExpertScore = Field(default="reap", description="frequency, reap (REAP's gate-weighted output norm) "
                                                           "or reconstruction (greedy, by the layer's output error)")
    renormalize: bool = Field(default=False, description="make the pruned router renormalise its top-k weights "
                                                         "to sum to 1 (norm_topk_prob)")
    device: str | None = Field(default=None, description="where each layer's experts are scored (e.g. cuda)")


class ExpertMergeConfig(Config):
    """Merge each layer's experts into fewer (M-SMoE): the most used experts stay as group centres; every other
    expert joins the centre whose router logits it resembles most; each group is averaged weighted by the
    experts' routing frequencies, after aligning their hidden neurons to the centre's."""

    method: Literal["expert_merge"] = "expert_merge"
    sparsity: Sparsity = Field(description="fraction of each layer's routed experts merged away, in [0, 1)")
    align: bool = Field(default=True, description="permute each member's hidden neurons to match its centre's "
                                                  "before averaging (weight matching)")
    renormalize: bool = False
    device: str | None = Field(default=None, description="where each layer's experts are scored (e.g. cuda)")


EXPERT_METHODS: Registry[type[Config]] = Registry("expert method", key="method")
EXPERT_METHODS.add("expert_prune", ExpertPruneConfig, config=ExpertPruneConfig)
EXPERT_METHODS.add("expert_merge", ExpertMergeConfig, config=ExpertMergeConfig)
