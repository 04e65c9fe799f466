"""How important each removable unit of a group is: l1, l2, bn_scale, taylor, random.

Scores sum over every tensor slice the unit owns across the group (its Conv/Linear rows and
columns, its norm's scale), as group-level magnitude in DepGraph (Fang et al., 2023) does.
``bn_scale`` is Network Slimming's |γ| (Liu et al., 2017); ``taylor`` is the first-order Taylor
estimate (g·w summed over the unit, squared) of Molchanov et al., 2019.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .groups import Group

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")


def _slices(group: Group, tensors: dict[int, Tensor] | None = None) -> list[tuple[str, Tensor, Tensor]]:
    """(member key, tensor with the channel dimension first, positions of each unit) for every weight the
    group's members hold; ``tensors`` substitutes other tensors of the same shapes (e.g. g·w for Taylor)."""
    out = []
    for m in group.members:
        key = (m.name, m.role)
        mod = m.module
        pos = group.where[key]
        params: list[Tensor] = []
        if m.role in ("out", "dw"):
            params = [mod.weight] + ([mod.bias] if getattr(mod, "bias", None) is not None else [])
            dims = [0] * len(params)
        elif m.role == "in":
            params, dims = [mod.weight], [1]
        else:
            params = [p for p in (getattr(mod, "weight", None), getattr(mod, "bias", None)) if p is not None]
            dims = [0] * len(params)
        for p, d in zip(params, dims):
            t = tensors[id(p)] if tensors is not None else p.detach()
            out.append((key, t.movedim(d, 0), pos))
    return out


def _per_unit(group: Group, fn: Callable[[Tensor], Tensor], tensors: dict[int, Tensor] | None = None,
              roles: tuple[str, ...] = ("out", "in", "dw", "norm")) -> Tensor:
    scores = torch.zeros(len(group), dtype=torch.float64)
    for key, t, pos in _slices(group, tensors):
        if key[1] not in roles:
            continue
        rows = fn(t.reshape(t.shape[0], -1).double()).sum(1)
        for i, u in enumerate(group.units):
            scores[i] += rows[torch.as_tensor(pos[u])].sum()
    return scores


def score_groups(groups: list[Group], importance: str, *, model: nn.Module | None = None,
                 loss_fn: Callable[[nn.Module], Tensor] | None = None, seed: int = 0) -> list[Tensor]:
    """One score tensor per group (higher = more important)."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(len(g), generator=gen, dtype=torch.float64) for g in groups]
    if importance == "l1":
        return [_per_unit(g, torch.abs) for g in groups]
    if importance == "l2":
        return [_per_unit(g, torch.square) for g in groups]
    if importance == "bn_scale":
        out = []
        for g in groups:
            has_bn = any(m.role == "norm" and isinstance(m.module, nn.modules.batchnorm._BatchNorm) for m in g.members)
            out.append(_bn_scale(g) if has_bn else _per_unit(g, torch.square))
        return out
    if loss_fn is None or model is None:
        raise ValueError("importance='taylor' needs loss_fn=, a function that takes the model and returns a scalar loss")
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    gw = {id(p): (g * p).detach() if g is not None else torch.zeros_like(p) for p, g in zip(params, grads)}
    return [_per_unit(g, lambda t: t, gw).square() for g in groups]


def _bn_scale(group: Group) -> Tensor:
    scores = torch.zeros(len(group), dtype=torch.float64)
    for m in group.members:
        if m.role == "norm" and isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.module.weight is not None:
            w = m.module.weight.detach().abs().double()
            pos = group.where[(m.name, m.role)]
            for i, u in enumerate(group.units):
                scores[i] += w[torch.as_tensor(pos[u])].sum()
    return scores
