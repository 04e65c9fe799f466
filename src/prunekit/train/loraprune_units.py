"""The units LoRAPrune removes, each masked in every layer that carries it and scored from LoRA's weights and
gradients: MLP neurons (:class:`NeuronLayer`, one per projection into or out of an MLP) and attention heads
(:class:`HeadLayer`, one per attention layer: whole key/value groups, or the same number of query heads in every
group). Planning what a head cut may remove (reachable counts, ALiBi, reload) is :func:`plan_heads`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.fraction import keep_count
from ..core.mask import Mask
from ..core.scope import is_transposed
from .recovery import LoRA


def lora_gradient(adapter: LoRA) -> Tensor:
    """LoRAPrune's estimate of the weight's gradient from its adapter: ``G_B·A + B·G_A − G_B·G_A`` (the weight's
    layout; zero where the adapters got no gradient)."""
    a, b = adapter.A.detach(), adapter.B.detach()
    ga = adapter.A.grad if adapter.A.grad is not None else torch.zeros_like(a)
    gb = adapter.B.grad if adapter.B.grad is not None else torch.zeros_like(b)
    return (gb @ a + b @ ga - gb @ ga).reshape(adapter.shape)


def parts(module: nn.Module) -> tuple[Tensor, LoRA | None, Tensor]:
    """A masked, adapted layer's raw weight (the parametrization's ``original``), its LoRA adapter (or None) and mask."""
    plist = module.parametrizations.weight
    mask = next(p.mask for p in plist if isinstance(p, Mask))
    adapter = next((p for p in plist if isinstance(p, LoRA)), None)
    return plist.original, adapter, mask


def importance(module: nn.Module, criterion: str) -> Tensor | None:
    """Each weight entry's importance in (out, in) layout, float64: ``|Ĝ ⊙ (W·mask + α·B·A)|`` with Ĝ LoRA's
    estimate (``lora``) or the true gradient (``gradient``), or ``|W·mask + α·B·A|`` (``magnitude``); None when the
    gradient it needs is missing."""
    w, adapter, mask = parts(module)
    with torch.no_grad():
        effective = w.detach() * mask
        if adapter is not None:
            effective = effective + adapter.delta().detach()
        if criterion == "magnitude":
            imp = effective.abs()
        else:
            grad = w.grad if criterion == "gradient" else (lora_gradient(adapter) if adapter is not None else None)
            if grad is None:
                return None
            imp = (grad * effective).abs()
        if is_transposed(module):
            imp = imp.t()
        return imp.reshape(imp.shape[0], -1).double()


def _switch_off_(module: nn.Module, units: Tensor, rows: bool) -> None:
    """Zero the mask of the given rows (or columns) of a layer, in the (out, in) view of its weight."""
    _, _, mask = parts(module)
    view = mask.t() if is_transposed(module) else mask  # a view: the mask changes in place
    with torch.no_grad():
        if rows:
            view[units] = False
        else:
            view[:, units] = False


@dataclass
class NeuronLayer:
    """One masked, adapted linear layer of an MLP, and whether its units are its rows (into the MLP) or columns."""

    module: nn.Module
    rows: bool
    gated: bool = False

    def unit_scores(self, criterion: str, n: int) -> Tensor:
        """This layer's importance of each of the MLP's ``n`` neurons, divided by its L2 norm."""
        imp = importance(self.module, criterion)
        if imp is None:
            return torch.zeros(n, dtype=torch.float64)
        s = imp.sum(1) if self.rows else imp.sum(0)
        if self.gated:
            s = s[:n] + s[n:]
        return s / (torch.linalg.vector_norm(s) + 1e-12)

    def mask_units_(self, dead: Tensor, n: int) -> None:
        """Zero the mask of the given neurons (indices into the MLP's ``n``)."""
        _switch_off_(self.module, torch.cat([dead, dead + n]) if self.gated else dead, self.rows)


@dataclass
class HeadLayer:
    """One attention layer's units: key/value groups (``unit="group"``: their query, key and value rows and their
    columns of the output projection) or query heads (``"query"``: their query rows and output columns)."""

    part: Any  # structured.transformers.layouts.AttentionParts
    unit: str

    @property
    def count(self) -> int:
        return self.part.kv_heads if self.unit == "group" else self.part.heads

    def _members(self) -> list[tuple[nn.Module, Tensor, bool]]:
        """Each layer carrying the units: the module, the unit of each of its rows / columns (−1: none), rows?"""
        from ..structured.transformers.layouts import Q

        out = []
        for p in self.part.projections:
            units = self.part.row_groups(p) if self.unit == "group" else torch.where(p.kind == Q, p.head, -1)
            out.append((p.module, units, True))
        cols = self.part.out_heads()
        out.append((self.part.out, cols // self.part.rep if self.unit == "group" else cols, False))
        return out

    def modules(self) -> list[nn.Module]:
        return [m for m, _, _ in self._members()]

    def unit_scores(self, criterion: str) -> Tensor:
        """Each unit's importance: per layer, its rows' (columns') importance summed and divided by the layer's L2
        norm over units, then summed over the layers."""
        total = torch.zeros(self.count, dtype=torch.float64)
        for module, units, rows in self._members():
            imp = importance(module, criterion)
            if imp is None:
                continue
            s = imp.sum(1) if rows else imp.sum(0)
            owned = units >= 0
            per = torch.zeros(self.count, dtype=torch.float64).index_add_(0, units[owned], s[owned])
            total += per / (torch.linalg.vector_norm(per) + 1e-12)
        return total

    def mask_units_(self, dead: Tensor) -> None:
        """Zero the masks of the given units (group or query-head indices) in every layer carrying them."""
        for module, units, rows in self._members():
            _switch_off_(module, torch.isin(units, dead).nonzero().flatten(), rows)

    def next_dead(self, scores: Tensor, gone: Tensor, remove: int) -> Tensor:
        """The live units to switch off so that ``remove`` are gone in all (per key/value group for query heads):
        the lowest-scoring first."""
        live = torch.where(gone, torch.full_like(scores, float("inf")), scores)
        if self.unit == "group":
            need = remove - int(gone.sum())
            return torch.argsort(live, stable=True)[:max(need, 0)]
        rep = self.part.rep
        new = []
        for g in range(self.part.kv_heads):
            block = slice(g * rep, (g + 1) * rep)
            need = remove - int(gone[block].sum())
            if need > 0:
                new.append(g * rep + torch.argsort(live[block], stable=True)[:need])
        return torch.cat(new) if new else torch.zeros(0, dtype=torch.long)


@dataclass
class HeadPlan:
    """What a head cut will do: the unit, the units of each layer and those kept, and the config fields after."""

    parts: list[Any]
    unit: str
    units: int  # per layer: groups, or query heads per group
    keep: int
    heads: tuple[int, int]  # query heads before, after
    kv_heads: tuple[int, int]
    fields: dict[str, Any]
    note: str | None = None

    @property
    def fraction(self) -> float:
        """The fraction of query heads removed."""
        return 1 - self.heads[1] / self.heads[0]


def plan_heads(model: nn.Module, sparsity: float, caller: str = "loraprune_") -> HeadPlan:
    """The head cut closest to removing ``sparsity`` of every attention layer's heads that the config class accepts
    and ``from_pretrained`` can rebuild; raises a ValueError (nothing changed) for no attention, non-uniform layers,
    ALiBi, a fraction that removes no head, or a shape that does not reload."""
    from ..structured.transformers.common import reload_problem_after
    from ..structured.transformers.heads import (_choose_count, _choose_unit, _kept_queries, _remove_heads_,
                                                 head_layout, reachable, unit_sizes)
    from ..structured.transformers.layouts import attention_layers

    found, heads, kv, d = head_layout(model, caller)
    unit = _choose_unit("auto", kv)
    rep = heads // kv
    units = kv if unit == "group" else rep
    config = getattr(model, "config", None)
    sizes = unit_sizes(config, unit, heads, kv, d)
    keep, note = _choose_count(config, units, keep_count(units, sparsity), sizes)
    if keep == units:
        raise ValueError(f"{caller}: removing {sparsity:.0%} of {heads} query heads ({kv} key/value) removes none: "
                         f"heads go by {'key/value groups' if unit == 'group' else 'query heads per group'}, reachable "
                         f"fractions {', '.join(f'{f:.0%}' for f in reachable(units) if f > 0)}. Nothing was changed")
    new = (keep * rep, keep) if unit == "group" else (kv * keep, kv)
    first = (lambda part, i: torch.arange(keep)) if unit == "group" else \
        (lambda part, i: _kept_queries(part, torch.zeros(heads), keep))
    problem = reload_problem_after(model, lambda twin: _remove_heads_(twin, attention_layers(twin), unit, first,
                                                                      new[0], new[1], sizes(keep)))
    if problem:
        raise ValueError(f"{caller}: from_pretrained could not rebuild {type(model).__name__} with {new[0]} query / "
                         f"{new[1]} key-value heads: {problem}. Nothing was changed; remove neurons only")
    return HeadPlan(found, unit, units, keep, (heads, new[0]), (kv, new[1]), sizes(keep), note)


def remove_heads_(model: nn.Module, plan: HeadPlan, dead: list[Tensor]) -> None:
    """Remove the dead units of each attention layer (``dead[i]``: a bool per unit) and write the config."""
    from ..structured.transformers.heads import _remove_heads_

    def kept(part: Any, i: int) -> Tensor:
        return torch.nonzero(~dead[i]).flatten()

    _remove_heads_(model, plan.parts, plan.unit, kept, plan.heads[1], plan.kv_heads[1], plan.fields)


def removal_count(plan: HeadPlan, target: float, final: float) -> int:
    """Units to have removed per layer (per group for query heads) when ``target`` of ``final`` is in force."""
    total = plan.units - plan.keep
    return total if target >= final else int(round(total * target / final)) if final > 0 else 0


__all__ = ["HeadLayer", "HeadPlan", "NeuronLayer", "importance", "lora_gradient", "plan_heads", "remove_heads_"]
