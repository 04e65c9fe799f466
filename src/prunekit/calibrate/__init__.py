"""Calibration: finding a transformer's blocks, batching calibration data, the block-by-block engine
and the one collector of input statistics (for Linear layers and fused MoE experts)."""

from .batches import calibration_batches
from .blocks import Blocks, find_blocks
from .blockwise import BlockInputs, capture_inputs, run_block, walk_blocks_
from .moe import FusedExperts, fused_experts
from .stats import InputStats, collect_input_stats

__all__ = ["BlockInputs", "Blocks", "FusedExperts", "InputStats", "calibration_batches", "capture_inputs",
           "collect_input_stats", "find_blocks", "fused_experts", "run_block", "walk_blocks_"]
