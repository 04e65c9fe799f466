"""SynFlow: data-free iterative synaptic flow (Tanaka et al., 2020).

Scores |θ ⊙ ∂R/∂θ| where R is the sum of the output of the network with all weights replaced by
their absolute values, fed an all-ones input. Run it over several iterations
(``prune_(..., method="synflow", iterations=100)``) as the paper does to avoid layer collapse.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..core.scope import Target
from ..infra.calling import call_model, output_tensor
from .base import ScoreContext, eval_mode, register_criterion


def _ones_like_inputs(inputs):
    if isinstance(inputs, Tensor):
        if not inputs.is_floating_point():
            raise ValueError("synflow needs floating-point example inputs; models fed token ids are not supported")
        if inputs.dim() and inputs.shape[0] == 0:
            raise ValueError(f"synflow needs example_inputs with at least one example; got shape {tuple(inputs.shape)}")
        return torch.ones_like(inputs[:1], dtype=torch.float64)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_ones_like_inputs(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _ones_like_inputs(v) for k, v in inputs.items()}
    raise ValueError(f"synflow cannot build an all-ones input from {type(inputs).__name__}")


@register_criterion("synflow", needs_inputs=True)
def synflow(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by its synaptic flow |θ ⊙ ∂R/∂θ| on a linearized copy of the model."""
    names = {id(t.module): t.name for t in targets}
    probe = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    modules = {names[id(m)]: pm for m, pm in zip(model.modules(), probe.modules()) if id(m) in names}
    params = [modules[t.name].parametrizations.weight.original if hasattr(modules[t.name], "parametrizations")
              else modules[t.name].weight for t in targets]
    with eval_mode(probe), torch.enable_grad():
        r = output_tensor(call_model(probe, _ones_like_inputs(ctx.example_inputs))).sum()
        grads = torch.autograd.grad(r, params, allow_unused=True)
    out = {}
    for t, g in zip(targets, grads):
        w = modules[t.name].weight.detach()
        out[t.name] = torch.zeros_like(w) if g is None else (g * w).abs()
    # Synaptic flow grows with depth and can pass float32's range (3.4e38): then one common scale brings
    # it back, keeping the ranking and the zeros.
    top = max((float(s.max()) for s in out.values() if s.numel()), default=0.0)
    scale = top if 1e30 < top < float("inf") else 1.0
    return {name: (s / scale).float().cpu() for name, s in out.items()}
