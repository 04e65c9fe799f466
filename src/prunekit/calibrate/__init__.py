"""Calibration: the block-by-block engine and the hooks that collect input statistics."""

from .blockwise import FAMILIES, BlockInputs, as_batches, capture_inputs, family_of, find_blocks, walk_blocks_
from .stats import InputStats

__all__ = ["FAMILIES", "BlockInputs", "InputStats", "as_batches", "capture_inputs", "family_of", "find_blocks",
           "walk_blocks_"]
