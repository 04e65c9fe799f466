"""Physical removal: slice every member's tensors to the kept channels and fix the module's sizes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .graph import DependencyGraph, Member


def _slice_param(module: nn.Module, name: str, keep: Tensor, dim: int) -> None:
    p = getattr(module, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, keep).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        module._buffers[name] = new


def apply_member(m: Member, keep: Tensor) -> None:
    """Keep only positions ``keep`` of member ``m`` (a Conv/Linear row or column set, or a norm)."""
    mod = m.module
    n = len(keep)
    if m.role == "out":
        _slice_param(mod, "weight", keep, 0)
        _slice_param(mod, "bias", keep, 0)
        if isinstance(mod, nn.Linear):
            mod.out_features = n
        else:
            mod.out_channels = n
    elif m.role == "in":
        _slice_param(mod, "weight", keep, 1)
        if isinstance(mod, nn.Linear):
            mod.in_features = n
        else:
            mod.in_channels = n
    elif m.role == "dw":
        mult = mod.out_channels // mod.in_channels
        _slice_param(mod, "weight", keep, 0)
        _slice_param(mod, "bias", keep, 0)
        mod.out_channels = n
        mod.in_channels = mod.groups = n // mult
    elif m.role == "norm":
        before = len(m.labels)
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(mod, name, keep, 0)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.num_features = n
        elif isinstance(mod, nn.LayerNorm):
            mod.normalized_shape = (n,)
        elif isinstance(mod, nn.GroupNorm):
            per = before // mod.num_groups
            mod.num_channels, mod.num_groups = n, n // per
        elif isinstance(mod, nn.PReLU):
            mod.num_parameters = n
    else:
        raise ValueError(f"unknown member role {m.role!r}")


def kept_positions(graph: DependencyGraph, m: Member, removed: set[int]) -> Tensor:
    """Positions of member ``m`` whose unit is not removed."""
    roots = graph.roots(m.labels)
    return torch.as_tensor([i for i, r in enumerate(roots.tolist()) if r not in removed], dtype=torch.long)


def remove_(model: nn.Module, graph: DependencyGraph, removed: set[int]) -> None:
    """Remove the units ``removed`` from every member of ``graph`` whose modules live in ``model``.

    The graph's members must name modules of ``model`` (looked up by name, so the graph of one model
    can be applied to a deep copy of it)."""
    mods = dict(model.named_modules())
    plans = []
    for (name, role), m in graph.members.items():
        keep = kept_positions(graph, m, removed)
        if len(keep) == len(m.labels):
            continue
        if len(keep) == 0:
            raise ValueError(f"removal would leave {name!r} ({role}) with no channels; this is a bug in the plan")
        plans.append((Member(name, mods[name], role, m.labels), keep))
    for member, keep in plans:
        apply_member(member, keep)
