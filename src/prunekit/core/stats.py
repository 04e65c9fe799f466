"""Bytes of a tensor stored the smaller way (dense, or a bitmask plus its non-zero values): what the
sparse file format writes and what ``summary`` reports as "stored sparse". The per-layer summary
itself, with its MACs, lives in ``metrics/summary.py``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sparse_nbytes(t: Tensor) -> int:
    """Bytes to store ``t`` the smaller way: dense, or a bitmask plus its non-zero values."""
    dense = t.numel() * t.element_size()
    if not t.is_floating_point() or t.numel() < 64:
        return dense
    bitmask = math.ceil(t.numel() / 8) + int(torch.count_nonzero(t)) * t.element_size()
    return min(dense, bitmask)
