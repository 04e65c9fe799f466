"""Model state that survives masking: weights by their logical name, and masks set exactly.

``model.state_dict()`` changes its keys when a mask is added (``fc.weight`` becomes
``fc.parametrizations.weight.original``); schedules and ticket searches need to copy weights in and
out across such changes, so they use the logical names here.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.mask import get_mask, masked_modules, remove_mask_, set_mask_, weight_of


def _own_modules(model: nn.Module):
    for name, module in model.named_modules():
        if name.endswith("parametrizations") or ".parametrizations." in name:
            continue
        yield name, module


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def plain_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``model`` under its logical name (the dense tensor under a mask)."""
    out: dict[str, Tensor] = {}
    for prefix, module in _own_modules(model):
        for name, p in module._parameters.items():
            if p is not None:
                out[_key(prefix, name)] = p
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                out[_key(prefix, name)] = weight_of(module, name)
        for name, b in module._buffers.items():
            if b is not None:
                out[_key(prefix, name)] = b
    return out


def plain_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of :func:`plain_tensors` (weights and buffers, masks left out)."""
    return {k: v.detach().clone() for k, v in plain_tensors(model).items()}


def load_plain_state_(model: nn.Module, state: Mapping[str, Tensor], keys: set[str] | None = None) -> None:
    """Copy ``state`` (from :func:`plain_state`) into the model's tensors; ``keys`` limits which ones."""
    tensors = plain_tensors(model)
    missing = [k for k in (keys or state) if k not in tensors]
    if missing:
        raise ValueError(f"the saved state names tensors the model lacks: {missing[:5]}")
    with torch.no_grad():
        for k in (keys or state):
            tensors[k].copy_(state[k])


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every mask of ``model`` by module name (True = kept)."""
    return {name: get_mask(m).detach().clone() for name, m in masked_modules(model)}


def replace_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Make the model's masks exactly ``masks`` (unlike ``set_mask_``, entries may come back);
    modules not named lose their mask and get their dense weight back."""
    modules = dict(model.named_modules())
    unknown = [n for n in masks if n not in modules]
    if unknown:
        raise ValueError(f"masks name modules the model lacks: {unknown[:5]}")
    for name, mask in masks.items():
        shape = tuple(weight_of(modules[name]).shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight has {shape}")
    for name, module in list(masked_modules(model)):
        if name not in masks:
            remove_mask_(module, bake=False)
    for name, mask in masks.items():
        old = get_mask(modules[name])
        if old is None:
            set_mask_(modules[name], mask)
        else:
            old.copy_(mask.to(old.device, torch.bool))


def zero_pruned_(model: nn.Module) -> None:
    """Set the dense weights under every mask to zero where the mask prunes them (so a regrown
    connection starts at zero, as RigL and SET do)."""
    with torch.no_grad():
        for _, module in masked_modules(model):
            weight_of(module).mul_(get_mask(module))
