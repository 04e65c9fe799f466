"""Structured pruning that physically shrinks models: channels of any model (a dependency graph recorded
from one forward pass, coupled groups, removal, a shape check), attention heads, MLP neurons and
layers of Hugging Face transformers."""

from .api import TARGETS, StructuredPruningWarning, groups, prune, prune_
from .config import StructuredConfig
from .graph import DependencyGraph, UnsupportedOperation
from .importance import IMPORTANCES
from .inference import fold_bn_, for_inference
from .layers import block_influence, choose_sublayers, prune_layers_
from .report import StructuredReport, count_macs
from .trace import build_graph
from .transformer_api import prune_transformer_
from .transformers import attention_layers, input_norms, mlp_layers, prune_heads_, prune_neurons_

__all__ = [
    "IMPORTANCES", "TARGETS", "DependencyGraph", "StructuredConfig", "StructuredPruningWarning", "StructuredReport",
    "UnsupportedOperation", "attention_layers", "block_influence", "build_graph", "choose_sublayers", "count_macs",
    "fold_bn_", "for_inference", "groups", "input_norms", "mlp_layers", "prune", "prune_", "prune_heads_",
    "prune_layers_", "prune_neurons_", "prune_transformer_",
]
