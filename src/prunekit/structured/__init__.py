"""Structured pruning that physically shrinks models: channels (any fx-traceable model), attention
heads, MLP neurons and layers (Hugging Face transformers)."""

from .api import TARGETS, fold_bn_, groups, prune, prune_
from .graph import DependencyGraph, UnsupportedOperation, build_graph
from .importance import IMPORTANCES

__all__ = ["IMPORTANCES", "TARGETS", "DependencyGraph", "UnsupportedOperation", "build_graph", "fold_bn_",
           "groups", "prune", "prune_"]
