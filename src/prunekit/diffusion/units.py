"""The prunable units of a diffusers ``UNet2DModel``, soft masks on them, and their physical removal.

Two kinds of unit, each removable exactly (the pruned UNet computes what the masked one computes):

- a **resnet group**: one GroupNorm group of a ``ResnetBlock2D``'s inner channels (``conv1``'s outputs,
  ``norm2``, ``time_emb_proj``'s rows, ``conv2``'s inputs). GroupNorm normalises each group on its own,
  so deleting a whole group leaves every other channel's value unchanged; the mask sits on ``conv2``'s
  input, after the nonlinearity (the UNet's analogue of a transformer FFN's hidden neurons);
- an **attention head** of a self-attention ``Attention`` (``to_q``/``to_k``/``to_v`` rows, ``to_out``
  columns); the mask sits on the heads' concatenated output, before ``to_out``.

A mask is ``[units]`` (one sub-network for the batch) or ``[batch, units]`` (one per sample: APTP routes
each prompt to its own code). EcoDiff, APTP and the memorization deletion all act on these units.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn


@dataclass
class UnitLayer:
    """One layer of units: ``kind`` ``"resnet"`` (GroupNorm groups of the inner channels) or ``"attention"``
    (heads); ``size`` channels per unit; ``params``/``macs`` one unit's parameters and MACs per sample
    and forward (``macs`` is filled by :func:`unit_costs`)."""

    name: str
    kind: str
    units: int
    size: int
    params: int
    macs: int = 0


def _attention_cls():
    from diffusers.models.attention_processor import Attention

    return Attention


def _resnet_cls():
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D


def find_unit_layers(unet: nn.Module) -> list[UnitLayer]:
    """Every prunable layer of ``unet``, in module order. A layout the removal cannot follow exactly is an
    error naming the module (cross-attention, a spatial norm, GQA heads, a resnet without ``norm2``)."""
    Attention, ResnetBlock2D = _attention_cls(), _resnet_cls()
    layers = []
    for name, m in unet.named_modules():
        if isinstance(m, ResnetBlock2D):
            g = m.norm2.num_groups
            c = m.conv1.out_channels
            if c % g:
                raise ValueError(f"{name}: {c} inner channels are not a multiple of norm2's {g} groups; "
                                 "this UNet layout cannot be pruned by groups")
            size = c // g
            per_channel = m.conv1.weight[0].numel() + (m.conv1.bias is not None) + 2 + m.conv2.weight[:, 0].numel()
            if m.time_emb_proj is not None:
                rows = 2 if m.time_embedding_norm == "scale_shift" else 1
                per_channel += rows * (m.time_emb_proj.in_features + (m.time_emb_proj.bias is not None))
            layers.append(UnitLayer(name, "resnet", g, size, per_channel * size))
        elif isinstance(m, Attention):
            if m.is_cross_attention or m.spatial_norm is not None or m.inner_kv_dim != m.inner_dim:
                raise ValueError(f"{name}: only plain self-attention heads can be pruned here (no cross-attention, "
                                 "spatial norm or grouped key/value heads)")
            if m.norm_q is not None or m.norm_k is not None or getattr(m, "add_q_proj", None) is not None:
                raise ValueError(f"{name}: attention with q/k norms or added projections is not supported")
            size = m.inner_dim // m.heads
            per_dim = sum(lin.in_features + (lin.bias is not None) for lin in (m.to_q, m.to_k, m.to_v))
            per_dim += m.to_out[0].out_features
            layers.append(UnitLayer(name, "attention", m.heads, size, per_dim * size))
    if not layers:
        raise ValueError("no ResnetBlock2D or Attention found: expected a diffusers UNet2DModel")
    return layers


def unit_costs(unet: nn.Module, layers: list[UnitLayer], sample: torch.Tensor, labels: torch.Tensor) -> None:
    """Fill each layer's ``macs`` (one unit's MACs per sample and forward) from the activation shapes of one
    forward on ``sample`` (``[1, C, H, W]``): the same formulas as ``metrics.macs`` (convolutions, linear
    layers and attention's two products), so removing units lowers ``count_macs`` by exactly these."""
    shapes: dict[str, tuple] = {}
    handles = []
    for layer in layers:
        m = unet.get_submodule(layer.name)
        if layer.kind == "resnet":
            handles.append(m.conv2.register_forward_pre_hook(
                lambda mod, args, n=layer.name: shapes.__setitem__(n, tuple(args[0].shape))))
        else:
            handles.append(m.to_q.register_forward_pre_hook(
                lambda mod, args, n=layer.name: shapes.__setitem__(n, tuple(args[0].shape))))
    try:
        with torch.no_grad():
            unet(sample[:1], torch.zeros(1, dtype=torch.long), class_labels=labels[:1])
    finally:
        for h in handles:
            h.remove()
    for layer in layers:
        m = unet.get_submodule(layer.name)
        if layer.kind == "resnet":
            _, _, h, w = shapes[layer.name]
            k1 = m.conv1.weight[0].numel()  # in_channels * kh * kw
            k2 = m.conv2.out_channels * m.conv2.kernel_size[0] * m.conv2.kernel_size[1]
            rows = 0 if m.time_emb_proj is None else (2 if m.time_embedding_norm == "scale_shift" else 1)
            temb = rows * (m.time_emb_proj.in_features if m.time_emb_proj is not None else 0)
            layer.macs = layer.size * (h * w * (k1 + k2) + temb)
        else:
            _, length, dim = shapes[layer.name]
            proj = length * (3 * dim + m.to_out[0].out_features)
            layer.macs = layer.size * (proj + 2 * length * length)


@contextmanager
def frozen(unet: nn.Module) -> Iterator[None]:
    """Within the block the UNet's weights do not train (no gradients) and it runs in eval mode; both are
    restored on exit, however the block ends (masks, routers and gates train around a fixed UNet)."""
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    was_training = unet.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        unet.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        unet.train(was_training)


@contextmanager
def masked(unet: nn.Module, layers: list[UnitLayer], masks: Callable[[], list[torch.Tensor]]) -> Iterator[None]:
    """Within the block, every unit's output is multiplied by its mask: ``masks()`` is called once per forward
    of ``unet`` and returns one tensor per layer, ``[units]`` or ``[batch, units]``. Hooks are removed on exit."""
    current: list[list[torch.Tensor]] = [[]]

    def refresh(mod, args, kwargs):
        current[0] = masks()
        if len(current[0]) != len(layers):
            raise ValueError(f"masks() gave {len(current[0])} masks for {len(layers)} unit layers")

    def scale(i: int, channel_dim: int):
        def hook(mod, args):
            x = args[0]
            m = current[0][i]
            m = m.repeat_interleave(layers[i].size, dim=-1)
            if m.dim() == 1:
                m = m.unsqueeze(0)
            shape = [m.shape[0]] + [1] * (x.dim() - 1)
            shape[channel_dim] = m.shape[1]
            return (x * m.reshape(shape).to(x.dtype),) + tuple(args[1:])
        return hook

    handles = [unet.register_forward_pre_hook(refresh, with_kwargs=True)]
    for i, layer in enumerate(layers):
        m = unet.get_submodule(layer.name)
        if layer.kind == "resnet":
            handles.append(m.conv2.register_forward_pre_hook(scale(i, 1)))
        else:
            handles.append(m.to_out[0].register_forward_pre_hook(scale(i, 2)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class RemovalReport:
    """What :func:`remove_units_` removed: units per layer (before → after), parameters before and after."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def params_removed(self) -> float:
        """The fraction of the UNet's parameters removed."""
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "params_removed": self.params_removed}

    def __str__(self) -> str:
        removed = sum(a - b for a, b in self.layers.values())
        return (f"removed {removed} units in {sum(a != b for a, b in self.layers.values())} of {len(self.layers)} "
                f"layers: {self.params_before:,} → {self.params_after:,} parameters "
                f"({100 * self.params_removed:.1f}% removed)")


def _keep_rows(lin: nn.Linear | nn.Conv2d, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[idx].clone(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[idx].clone(), requires_grad=lin.bias.requires_grad)
    if isinstance(lin, nn.Linear):
        lin.out_features = len(idx)
    else:
        lin.out_channels = len(idx)


def _keep_cols(lin: nn.Linear | nn.Conv2d, idx: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, idx].clone(), requires_grad=lin.weight.requires_grad)
    if isinstance(lin, nn.Linear):
        lin.in_features = len(idx)
    else:
        lin.in_channels = len(idx)


def _channels(keep: torch.Tensor, size: int) -> torch.Tensor:
    return (keep.nonzero().flatten()[:, None] * size + torch.arange(size)).flatten()


def check_keep(layers: list[UnitLayer], keep: list[torch.Tensor]) -> None:
    """Raise (one line) unless ``keep`` holds one boolean ``[units]`` vector per layer, each keeping at least
    one unit."""
    if len(keep) != len(layers):
        raise ValueError(f"keep has {len(keep)} entries for {len(layers)} unit layers")
    for layer, k in zip(layers, keep):
        if tuple(k.shape) != (layer.units,):
            raise ValueError(f"{layer.name}: keep mask of shape {tuple(k.shape)}, expected ({layer.units},)")
        if not bool(k.any()):
            raise ValueError(f"{layer.name}: every unit would be removed; keep at least one per layer")


def remove_units_(unet: nn.Module, layers: list[UnitLayer], keep: list[torch.Tensor]) -> RemovalReport:
    """Delete, in place, every unit whose ``keep`` entry is False (one boolean ``[units]`` vector per layer).
    The pruned UNet computes what the UNet masked by ``keep`` computes. Checked before anything changes."""
    keep = [torch.as_tensor(k).bool().cpu() for k in keep]
    check_keep(layers, keep)
    report = RemovalReport(params_before=sum(p.numel() for p in unet.parameters()))
    for layer, k in zip(layers, keep):
        m = unet.get_submodule(layer.name)
        report.layers[layer.name] = (layer.units, int(k.sum()))
        if bool(k.all()):
            continue
        idx = _channels(k, layer.size)
        if layer.kind == "resnet":
            c = m.conv1.out_channels
            _keep_rows(m.conv1, idx)
            if m.time_emb_proj is not None:
                rows = torch.cat([idx, idx + c]) if m.time_embedding_norm == "scale_shift" else idx
                _keep_rows(m.time_emb_proj, rows)
            n = m.norm2
            n.weight = nn.Parameter(n.weight.detach()[idx].clone(), requires_grad=n.weight.requires_grad)
            n.bias = nn.Parameter(n.bias.detach()[idx].clone(), requires_grad=n.bias.requires_grad)
            n.num_channels, n.num_groups = len(idx), int(k.sum())
            _keep_cols(m.conv2, idx)
        else:
            for lin in (m.to_q, m.to_k, m.to_v):
                _keep_rows(lin, idx)
            _keep_cols(m.to_out[0], idx)
            m.heads = int(k.sum())
            m.inner_dim = m.inner_kv_dim = len(idx)
        layer.units = int(k.sum())
    report.params_after = sum(p.numel() for p in unet.parameters())
    return report


def keep_lowest_removed(layers: list[UnitLayer], scores: list[torch.Tensor], amount: float,
                        cost: str = "params") -> list[torch.Tensor]:
    """Keep masks that remove the lowest-scored units (globally, across layers) until the removed ``cost``
    (``"params"`` or ``"macs"``, summed over the removed units) reaches ``amount``, always leaving at least
    one unit per layer (its highest-scored). Ties are broken by layer and unit order."""
    if cost not in ("params", "macs"):
        raise ValueError(f"cost must be 'params' or 'macs', got {cost!r}")
    keep = [torch.ones(layer.units, dtype=torch.bool) for layer in layers]
    order = sorted((float(s[u]), i, u) for i, s in enumerate(scores) for u in range(len(s)))
    removed = 0.0
    for _, i, u in order:
        if removed >= amount:
            break
        if int(keep[i].sum()) <= 1:
            continue
        keep[i][u] = False
        removed += getattr(layers[i], cost)
    return keep


@contextmanager
def recorded(unet: nn.Module, layers: list[UnitLayer]) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``unet`` appends one ``[batch, units]`` tensor (all layers' units,
    concatenated in ``layers`` order) to the yielded list: each unit's mean absolute output (over its channels
    and positions), taken where ``masked`` puts its mask."""
    out: list[torch.Tensor] = []
    parts: list[torch.Tensor | None] = [None] * len(layers)

    def start(mod, args, kwargs):
        parts[:] = [None] * len(layers)

    def finish(mod, args, kwargs, result):
        if all(p is not None for p in parts):
            out.append(torch.cat(parts, dim=1))

    def grab(i: int, channel_dim: int):
        def hook(mod, args):
            x = args[0].detach().abs()
            if channel_dim == 1:  # [B, C, H, W]
                per_channel = x.flatten(2).mean(2)
            else:  # [B, L, inner]
                per_channel = x.mean(1)
            parts[i] = per_channel.reshape(x.shape[0], layers[i].units, layers[i].size).mean(2)
        return hook

    handles = [unet.register_forward_pre_hook(start, with_kwargs=True),
               unet.register_forward_hook(finish, with_kwargs=True)]
    for i, layer in enumerate(layers):
        m = unet.get_submodule(layer.name)
        if layer.kind == "resnet":
            handles.append(m.conv2.register_forward_pre_hook(grab(i, 1)))
        else:
            handles.append(m.to_out[0].register_forward_pre_hook(grab(i, 2)))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
