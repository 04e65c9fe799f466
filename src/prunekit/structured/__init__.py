"""Structured pruning that physically shrinks models: channels of any model (a dependency graph recorded
from one forward pass, coupled groups, removal, a shape check), attention heads, MLP neurons and
layers of Hugging Face transformers."""

from .api import TARGETS, StructuredPruningWarning, groups, prune, prune_
from .config import StructuredConfig
from .graph.depgraph import DependencyGraph, UnsupportedOperation
from .graph.importance import IMPORTANCES
from .graph.inference import fold_bn_, for_inference
from .transformers.blocks import LayerPruneReport, block_influence, choose_sublayers, prune_layers_
from .graph.report import StructuredReport, count_macs
from .graph.trace import build_graph
from .transformers.units import TRANSFORMER_UNITS, HeadsConfig, LayersConfig, NeuronsConfig, prune_transformer_
from .transformers.heads import (
    HeadPruneReport, NeuronPruneReport, attention_layers, expert_layers, mlp_layers, prune_heads_, prune_neurons_,
)

__all__ = [
    "IMPORTANCES", "TARGETS", "TRANSFORMER_UNITS", "DependencyGraph", "HeadPruneReport", "HeadsConfig",
    "LayerPruneReport", "LayersConfig", "NeuronPruneReport", "NeuronsConfig", "StructuredConfig",
    "StructuredPruningWarning", "StructuredReport", "UnsupportedOperation", "attention_layers", "block_influence",
    "build_graph", "choose_sublayers", "count_macs", "expert_layers", "fold_bn_", "for_inference", "groups",
    "mlp_layers", "prune", "prune_", "prune_heads_", "prune_layers_", "prune_neurons_",
    "prune_transformer_",
]
