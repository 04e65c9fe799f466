"""Physical removal: slice every member tensor to its kept positions, keep shared tensors shared, and
fix the sizes modules store (``out_channels``, ``in_features``, ``num_features``, ``embed_dim``, …)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

import torch
from torch import Tensor, nn

from .depgraph import DependencyGraph

try:  # Hugging Face's transposed Linear (GPT-2's c_attn / c_fc)
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except Exception:  # pragma: no cover - transformers is optional
    _HFConv1D = None


def _slice_param(module: nn.Module, name: str, keep: Tensor, dim: int) -> None:
    """Keep positions ``keep`` of ``module.<name>`` along ``dim`` (a parameter stays a parameter)."""
    p = getattr(module, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, keep).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        module._buffers[name] = new


def kept_positions(graph: DependencyGraph, labels, removed: set[int], gone: np.ndarray | None = None) -> Tensor:
    """Positions of ``labels`` whose unit is not removed (``gone``: ``graph.removed_mask(removed)``, reused)."""
    gone = graph.removed_mask(removed) if gone is None else gone
    return torch.as_tensor(np.nonzero(~gone[np.asarray(labels, dtype=np.int64).ravel()])[0], dtype=torch.long)


def plan_removal(graph: DependencyGraph, removed: set[int]) -> dict[str, list[tuple[int, Tensor]]]:
    """For each tensor that changes: the (dim, kept positions) cuts, checked before anything changes."""
    cuts: dict[str, list[tuple[int, Tensor]]] = defaultdict(list)
    gone = graph.removed_mask(removed)
    for (tensor, dim), m in graph.members.items():
        keep = kept_positions(graph, m.labels, removed, gone)
        if len(keep) == len(m.labels):
            continue
        if len(keep) == 0:
            raise ValueError(f"removal would leave {tensor!r} with no positions along dim {dim}; this is a bug in the plan")
        cuts[tensor].append((dim, keep))
    return cuts


def remove_(model: nn.Module, graph: DependencyGraph, removed: set[int]) -> list[str]:
    """Remove the units ``removed`` from every member of ``graph`` in ``model`` (looked up by name, so the
    graph of one model applies to a deep copy of it). Returns the names of the modules that changed."""
    cuts = plan_removal(graph, removed)
    mods = dict(model.named_modules(remove_duplicate=False))
    old = {name: _sizes(mods[name]) for name in {mn for t in cuts for mn, _ in graph.refs.get(t, [])} if name in mods}
    changed: set[str] = set()
    for tensor, dims in cuts.items():
        refs = graph.refs.get(tensor) or [tuple(tensor.rsplit(".", 1)) if "." in tensor else ("", tensor)]
        first_mod, attr = refs[0]
        t = getattr(mods[first_mod], attr)
        new = t.detach()
        for dim, keep in dims:
            if new.shape[dim] != len(graph.members[(tensor, dim)].labels):
                raise ValueError(f"{tensor!r} has {new.shape[dim]} positions along dim {dim}, the plan expected "
                                 f"{len(graph.members[(tensor, dim)].labels)}; was the model changed after the graph was built?")
            new = new.index_select(dim, keep)
        new = new.clone()
        value: Tensor = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
        for mname, a in refs:  # every module that shares the tensor gets the same new one: ties stay tied
            m = mods[mname]
            if a in m._parameters:
                m._parameters[a] = value
            else:
                m._buffers[a] = value
            changed.add(mname)
    for name in sorted(changed):
        _fix_sizes(mods[name], old.get(name, {}))
    _fix_attrs(model, graph, removed, mods)
    return sorted(changed)


def _sizes(m: nn.Module) -> dict[str, int]:
    keys = ("in_channels", "out_channels", "groups", "num_channels", "num_groups")
    return {k: getattr(m, k) for k in keys if isinstance(getattr(m, k, None), int)}


def _fix_sizes(m: nn.Module, old: dict[str, int]) -> None:
    """Make a module's stored sizes describe its (new) tensors."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd) and isinstance(w, Tensor):
        if m.transposed:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        elif old.get("groups", 1) > 1 and old["groups"] == old.get("in_channels") and w.shape[1] == 1:
            mult = old["out_channels"] // old["in_channels"]  # depthwise: groups follow the channels
            m.out_channels = w.shape[0]
            m.in_channels = m.groups = w.shape[0] // mult
        else:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.Linear) and isinstance(w, Tensor):
        m.out_features, m.in_features = w.shape[0], w.shape[1]
    elif _HFConv1D is not None and isinstance(m, _HFConv1D):
        m.nx, m.nf = w.shape[0], w.shape[1]
    elif isinstance(m, (nn.modules.batchnorm._NormBase,)):
        ref = w if isinstance(w, Tensor) else getattr(m, "running_mean", None)
        if isinstance(ref, Tensor):
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm) and isinstance(w, Tensor):
        per = old["num_channels"] // old["num_groups"]
        whole_groups = old["num_groups"] >= per
        m.num_channels = w.shape[0]
        m.num_groups = w.shape[0] // per if whole_groups else old["num_groups"]
    elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and isinstance(w, Tensor) and len(m.normalized_shape) == 1:
        m.normalized_shape = (w.shape[0],)
    elif isinstance(m, nn.Embedding) and isinstance(w, Tensor):
        m.embedding_dim = w.shape[1]
    elif isinstance(m, nn.PReLU) and isinstance(w, Tensor):
        m.num_parameters = w.shape[0]
    elif isinstance(m, nn.MultiheadAttention):
        e = m.in_proj_weight.shape[1] if m.in_proj_weight is not None else m.q_proj_weight.shape[0]
        m.embed_dim = m.kdim = m.vdim = e
        m.head_dim = e // m.num_heads


def _fix_attrs(model: nn.Module, graph: DependencyGraph, removed: set[int], mods: dict[str, nn.Module]) -> None:
    """Set integer attributes that stored a reshaped width (``head_dim``, ``hidden_dim``, entries of a
    shape tuple) to the new width."""
    wanted: dict[tuple[str, str, int | None], set[int]] = defaultdict(set)
    gone = graph.removed_mask(removed)
    for fix in graph.attr_fixes:
        labels = fix.labels
        if labels is None and fix.member in graph.members:
            labels = graph.members[fix.member].labels
        if labels is None:
            continue
        wanted[(fix.module, fix.attr, fix.index)].add(len(kept_positions(graph, labels, removed, gone)))
    for (mname, attr, index), values in wanted.items():
        if len(values) != 1 or mname not in mods:
            continue
        new = values.pop()
        m = mods[mname]
        cur = getattr(m, attr, None)
        if index is not None and isinstance(cur, (tuple, list)) and index < len(cur):
            seq = list(cur)
            seq[index] = new
            setattr(m, attr, type(cur)(seq))
        elif attr == "normalized_shape" and isinstance(cur, tuple) and len(cur) == 1:
            m.normalized_shape = (new,)
        elif type(cur) is int:
            setattr(m, attr, new)
