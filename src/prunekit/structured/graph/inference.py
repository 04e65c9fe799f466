"""Preparing a (pruned) CNN for CPU inference: BatchNorm folded into convolutions, and a frozen,
oneDNN-fused TorchScript module (conv + bias + ReLU + residual add in one kernel).

What keeps a channel-pruned CNN from the speed-up its MACs promise is the work that does not
shrink with the MACs: BatchNorm, ReLU and residual additions touch every activation once, so
halving the channels halves them while the convolutions shrink four-fold. Folding and fusing
removes those passes, and the measured speed-up comes close to the MACs ratio.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...infra.calling import call_model
from .recorder import CONVS
from .trace import trace


def fold_bn_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, for inference (eval mode only).

    The BatchNorm becomes ``nn.Identity``; outputs match up to float rounding. Returns ``model``."""
    if model.training:
        raise ValueError("fold_bn_ is for inference: call model.eval() first (training would update BN statistics)")
    gm = trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), CONVS) \
                and len(src.users) == 1 and modules[node.target].track_running_stats:
            pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        _set(model, conv_name, fused)
        _set(model, bn_name, nn.Identity())
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class FrozenModule(nn.Module):
    """A frozen TorchScript module behind an ordinary ``nn.Module`` (so timing and calling code that
    reads ``.training`` or calls ``.eval()`` works)."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted
        self.eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.scripted(*args, **kwargs)


def for_inference(model: nn.Module, example_inputs: Any) -> nn.Module:
    """A copy of ``model`` for fast CPU inference: BatchNorm folded into the convolutions, traced with
    the example inputs, frozen and optimized by ``torch.jit.optimize_for_inference`` (oneDNN fusion
    of conv + ReLU + add). Outputs match the model's up to float rounding; the copy cannot be trained."""
    if isinstance(example_inputs, dict):
        raise ValueError("for_inference traces positional inputs: pass a tensor or a tuple, not a dict")
    prepared = fold_bn_(copy.deepcopy(model).eval())
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(prepared, inputs)))
        wrapped = FrozenModule(scripted)
        call_model(wrapped, example_inputs)
    return wrapped
