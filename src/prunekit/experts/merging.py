"""Merging the experts of one MoE layer (M-SMoE: Li et al., 2024, "Merge, Then Compress").

Centres are the most frequently routed experts (per routing group where the router is group-limited);
every other expert joins the centre whose router-logit column is most similar (cosine over the
calibration tokens); each group becomes one expert, the frequency-weighted average of its members'
weights, after each member's hidden neurons are permuted to match the centre's (the neurons of two
experts are in no particular order, so averaging them unaligned mixes unrelated features). The merged
expert keeps its centre's router row; the layer then keeps only the centres.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import MoeLayer
from .score import LayerStats, choose_keep, groups_of


def assign_groups(layer: MoeLayer, stats: LayerStats, per_group: int) -> dict[int, list[int]]:
    """``{centre: [members, centre included]}``: centres by frequency, members by router-logit similarity
    (within the centre's routing group)."""
    centres = choose_keep(layer, stats.frequency, per_group)
    gram = stats.logit_gram
    norms = gram.diagonal().clamp_min(1e-30).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    assign: dict[int, list[int]] = {c: [c] for c in centres}
    for group in groups_of(layer):
        cs = [c for c in centres if c in group]
        for e in group:
            if e in assign:
                continue
            best = max(cs, key=lambda c: (float(cos[e, c]), -c))
            assign[best].append(e)
    return assign


def _neuron_features(tensors: dict[str, tuple[Tensor, int | None]]) -> Tensor:
    """One row per hidden neuron: the neuron's weights in every tensor that has a neuron axis, concatenated."""
    parts = []
    for t, axis in tensors.values():
        if axis is None:
            continue
        m = t.movedim(axis, 0).reshape(t.shape[axis], -1)
        parts.append(m / m.norm().clamp_min(1e-12))
    return torch.cat(parts, dim=1)


def align_to(centre: dict[str, tuple[Tensor, int | None]], member: dict[str, tuple[Tensor, int | None]]
             ) -> dict[str, tuple[Tensor, int | None]]:
    """``member``'s tensors with its hidden neurons permuted to best match ``centre``'s (Hungarian matching
    on the neurons' weight vectors; the expert computes the same function)."""
    from scipy.optimize import linear_sum_assignment

    fc, fm = _neuron_features(centre), _neuron_features(member)
    sim = (fc @ fm.T).double().cpu().numpy()
    rows, cols = linear_sum_assignment(-sim)
    perm = torch.as_tensor(cols[rows.argsort()], dtype=torch.long)
    return {role: ((t.index_select(axis, perm.to(t.device)), axis) if axis is not None else (t, axis))
            for role, (t, axis) in member.items()}


@torch.no_grad()
def merge_layer_(layer: MoeLayer, groups: dict[int, list[int]], frequency: Tensor, align: bool = True) -> None:
    """Replace each centre's weights by the frequency-weighted average of its group, then keep the centres only."""
    for centre, members in groups.items():
        if len(members) == 1:
            continue
        base = layer.get_expert(centre)
        weights = frequency.cpu()[members].double()
        if float(weights.sum()) <= 0:
            weights = torch.ones(len(members), dtype=torch.float64)
        weights = (weights / weights.sum()).float()
        acc = {role: t * float(weights[0]) for role, (t, _) in base.items()}
        for w, e in zip(weights[1:].tolist(), members[1:]):
            other = layer.get_expert(e)
            if align:
                other = align_to(base, other)
            for role, (t, _) in other.items():
                acc[role] += t * w
        layer.set_expert(centre, acc)
    layer.keep_(sorted(groups))
