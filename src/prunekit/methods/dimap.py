"""DIMAP (He & Zhou, ICLR 2024): data-independent module-aware pruning for hierarchical ViTs such as Swin.

The score lives in :mod:`prunekit.criteria.dimap`; this is its config and registration as a score-based method
(criterion → allocation → pattern → mask). No calibration data: ``prune_(model, "dimap", 0.5)``.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from ..criteria import dimap as _dimap  # noqa: F401  (registers the criterion)
from .base import register_method
from .config import PruneConfig
from .score_based import ScoreMethod


class DimapConfig(PruneConfig):
    """Data-independent module-aware pruning: each weight scored by its share of its module's distortion,
    w² / Σ_{|v| ≥ |w|} v² over the module, ranked across modules (``allocation="global"``). ``modules`` groups
    the layers: ``stage`` (the paper's: per stage, QKV / projection / MLP / auxiliary such as patch merging),
    ``network`` (per role across stages) or ``layer`` (each layer alone, which is LAMP)."""

    method: Literal["dimap"] = "dimap"
    allocation: str = "global"
    modules: Literal["stage", "network", "layer"] = "stage"


register_method("dimap", DimapConfig)(partial(ScoreMethod, "dimap"))
