"""Tracing a model with torch.fx and building its :class:`DependencyGraph` on example inputs."""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Mapping

import torch
from torch import fx, nn

from .graph import DependencyGraph, UnsupportedOperation
from .propagate import CONVS, ChannelPropagator


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: Iterable[nn.Module] = (), concrete_args: dict[str, Any] | None = None
          ) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; modules in ``leaves`` are kept whole; ``concrete_args`` fixes
    arguments (e.g. keyword arguments left at their defaults). A clear error if fx cannot trace."""
    tracer = _Tracer({id(m) for m in leaves})
    try:
        graph = tracer.trace(model, concrete_args=concrete_args or None)
    except Exception as exc:  # fx raises many kinds: control flow on tensors, unsupported Python
        raise UnsupportedOperation(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. Pass the submodule "
            "that holds the untraceable code in ignore=[...] (it is then kept whole), or, for a Hugging Face "
            "transformer, use prunekit.structured.prune_heads_ / prune_neurons_ / prune_layers_."
        ) from exc
    return fx.GraphModule(tracer.root, graph)


def build_graph(model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module] = ()) -> DependencyGraph:
    """Trace ``model`` and follow channels on ``example_inputs`` (a tensor, tuple or dict).

    Modules in ``ignore`` keep their output channels (a Conv/Linear still loses the input channels its
    producer loses); any other ignored module is an opaque leaf whose channels are kept whole.
    """
    ignore = list(ignore)
    concrete: dict[str, Any] = {}
    if isinstance(example_inputs, Mapping):
        params = inspect.signature(model.forward).parameters
        unknown = set(example_inputs) - set(params)
        if unknown:
            raise ValueError(f"example_inputs has keys {sorted(unknown)} that {type(model).__name__}.forward() does not take")
        concrete = {k: p.default for k, p in params.items() if k not in example_inputs
                    and p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    gm = trace(model, [m for m in ignore if not isinstance(m, CONVS + (nn.Linear,))], concrete)
    graph = DependencyGraph()
    prop = ChannelPropagator(gm, graph, {id(m) for m in ignore})
    placeholders = [p for p in gm.graph.nodes if p.op == "placeholder"]
    if isinstance(example_inputs, Mapping):
        args = [example_inputs[p.target] if p.target in example_inputs else concrete.get(p.target)
                for p in placeholders]
    elif isinstance(example_inputs, (tuple, list)):
        args = list(example_inputs)
    else:
        args = [example_inputs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prop.run(*args)
    finally:
        model.train(was_training)
    return graph
