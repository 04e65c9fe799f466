"""Image quality: PSNR, what the restoration and super-resolution applications report."""

from __future__ import annotations

import math

from torch import Tensor


def psnr(restored: Tensor, reference: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch (images in [0, ``peak``]; ``restored`` is clamped to
    that range first); infinite for an exact match."""
    if restored.shape != reference.shape:
        raise ValueError(f"restored and reference images must have one shape, got {tuple(restored.shape)} and "
                         f"{tuple(reference.shape)}")
    mse = float(((restored.clamp(0, peak) - reference) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)
