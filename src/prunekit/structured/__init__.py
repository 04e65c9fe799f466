"""Structured pruning that physically shrinks models: channels of any model (a dependency graph recorded
from one forward pass, coupled groups, removal, a shape check: :mod:`.graph`), attention heads, MLP neurons
and layers of Hugging Face transformers (:mod:`.transformers`). One front door, :func:`prune_` /
:func:`prune` with ``what=`` one of :data:`WHATS`; one function per unit below it."""

from .api import TARGETS, StructuredPruningWarning, groups, prune, prune_
from .config import WHATS, StructuredConfig
from .graph.depgraph import DependencyGraph, UnsupportedOperation
from .graph.importance import IMPORTANCES
from .graph.inference import fold_bn_, for_inference
from .graph.report import StructuredReport, count_macs, count_params
from .graph.trace import build_graph
from .transformers.blocks import LayerPruneReport, block_influence, choose_sublayers, prune_layers_
from .transformers.heads import HeadPruneReport, attention_layers, prune_heads_
from .transformers.neurons import NeuronPruneReport, expert_layers, mlp_layers, prune_neurons_
from .transformers.units import TRANSFORMER_UNITS, HeadsConfig, LayersConfig, NeuronsConfig, prune_transformer_

__all__ = [
    "IMPORTANCES", "TARGETS", "TRANSFORMER_UNITS", "WHATS", "DependencyGraph", "HeadPruneReport", "HeadsConfig",
    "LayerPruneReport", "LayersConfig", "NeuronPruneReport", "NeuronsConfig", "StructuredConfig",
    "StructuredPruningWarning", "StructuredReport", "UnsupportedOperation", "attention_layers", "block_influence",
    "build_graph", "choose_sublayers", "count_macs", "count_params", "expert_layers", "fold_bn_", "for_inference",
    "groups", "mlp_layers", "prune", "prune_", "prune_heads_", "prune_layers_", "prune_neurons_", "prune_transformer_",
]
