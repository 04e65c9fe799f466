"""Smaller, faster dense decoders: cut a Hugging Face decoder along its heads, MLP neurons, residual width
and depth to a uniform shape chosen under a parameter or memory budget (Minitron-style), then recover its
quality by logit distillation from the unpruned model; or to per-layer shapes (each block its own key/value
groups and MLP width, blocks optionally removed) chosen by an exact MILP or greedily under a parameter,
memory or measured-speed budget (``shrink_layers_``; saved folders read back with ``load_shrunk``). ``shrink_(model, "params=0.6", calibration=ids)``;
on the command line ``prunekit shrink --model M --target params=0.6 --out DIR``."""

from .api import ScoredShape, ShrinkReport, apply_shape_, calibration_loss, plan_shrink, shrink_
from .budget import Counter, Shape, Target, non_embedding_params, parse_target, shape_of
from .layout import FAMILIES, WidthLayout, width_layout
from .perlayer import LayerShapes, apply_layer_shapes_, layer_shapes_of, load_shrunk
from .search import AXES
from .search_layers import LayerShrinkReport, shrink_layers_
from .width import HiddenPruneReport, hidden_scores, prune_hidden_

__all__ = [
    "AXES", "FAMILIES", "Counter", "HiddenPruneReport", "LayerShapes", "LayerShrinkReport", "ScoredShape", "Shape",
    "ShrinkReport", "Target", "WidthLayout", "apply_layer_shapes_", "apply_shape_", "calibration_loss",
    "hidden_scores", "layer_shapes_of", "load_shrunk", "non_embedding_params", "parse_target", "plan_shrink",
    "prune_hidden_", "shape_of", "shrink_", "shrink_layers_", "width_layout",
]
