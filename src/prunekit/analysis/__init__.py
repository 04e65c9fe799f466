"""Analyses of pruning runs that prune nothing themselves: the three-regime model's loss-landscape measurements
(:mod:`.regimes`: linear-path barrier and mode connectivity, CKA, sharpness, the regime taxonomy)."""

from .regimes import (REGIMES, PathReport, RegimeConfig, Transition, classify, fit_barrier_threshold, linear_cka,
                      linear_path, predicted_direction, prediction_accuracy, recompute_bn_, sharpness)

__all__ = [
    "REGIMES", "PathReport", "RegimeConfig", "Transition", "classify", "fit_barrier_threshold", "linear_cka",
    "linear_path", "predicted_direction", "prediction_accuracy", "recompute_bn_", "sharpness",
]
