"""Merging fine-tuned models into their base: DARE, TIES, DELLA, magnitude pruning of deltas, task
arithmetic and averaging, streamed tensor by tensor from safetensors, seeded per tensor.

    from prunekit.merge import merge
    report = merge("base/", ["ft-a/", "ft-b/"], "dare_ties", density=0.1, seed=0, out="merged/")
"""

from .api import DeltaStats, MergeReport, merge, merge_state_dicts
from .config import (MERGE_METHODS, DareConfig, DareTiesConfig, DellaConfig, DellaLinearConfig, LinearConfig,
                     MagnitudeConfig, MergeConfig, TaskArithmeticConfig, TiesConfig, merge_config)
from .sources import SafetensorsWriter, TensorFolder, check_mergeable
from .sparsify import tensor_generator
from .tensors import merge_tensor

__all__ = [
    "MERGE_METHODS", "DareConfig", "DareTiesConfig", "DellaConfig", "DellaLinearConfig", "DeltaStats", "LinearConfig",
    "MagnitudeConfig", "MergeConfig", "MergeReport", "SafetensorsWriter", "TaskArithmeticConfig", "TensorFolder",
    "TiesConfig", "check_mergeable", "merge", "merge_config", "merge_state_dicts", "merge_tensor", "tensor_generator",
]
