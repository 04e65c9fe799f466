"""Fused MoE experts: transformers 5 stores an MoE block's experts as 3-D parameters.

``MixtralExperts``, ``Qwen3MoeExperts``, ``Qwen2MoeExperts`` … hold ``gate_up_proj`` (experts, 2 ×
intermediate, hidden) and ``down_proj`` (experts, hidden, intermediate) — or their transposes, or
``up_proj`` alone for ungated experts — and are called as ``experts(hidden_states, top_k_index,
top_k_weights)``. transformers' ``use_experts_implementation`` decorator marks the layout on the module
(``is_transposed``, ``has_gate``, ``has_bias``, ``is_concatenated``) and gives it ``_apply_gate``. This
module reads that description, so every family that uses the decorator is handled the same way:
expert ``e``'s matrices are seen as ordinary (out, in) weights, calibrated on the tokens the router
sent to expert ``e`` only.

Llama 4's ``Llama4TextExperts`` predates the decorator: it stores (in, out) matrices without saying so
and is called as ``experts(routed_in)``, every expert on its own slice of ``(experts × tokens, hidden)``
rows, already scaled by the router (a token the router did not send to an expert arrives as a row of
zeros). Its layout is read from the shapes, and its routing from those rows (``routed=False``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def _param(module: nn.Module, name: str) -> Tensor | None:
    """The leaf tensor behind ``module.<name>`` (under a mask, if any), or None."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    p = module._parameters.get(name)
    return p


@dataclass(frozen=True)
class FusedExperts:
    """One fused-experts module: its name, the module, its two parameter names and its layout."""

    name: str
    module: nn.Module
    up: str  # "gate_up_proj" (gated) or "up_proj"
    down: str  # "down_proj"
    num_experts: int
    transposed: bool
    gated: bool
    concatenated: bool
    routed: bool = True  # called as experts(hidden, top_k_index, ...); False: every expert on its slice of rows

    @property
    def params(self) -> tuple[str, str]:
        return (self.up, self.down)

    def key(self, param: str, expert: int) -> str:
        """The name of expert ``expert``'s matrix of ``param`` (``model.layers.0.mlp.experts.down_proj[3]``)."""
        return f"{self.name}.{param}[{expert}]"

    def target_name(self, param: str) -> str:
        """The name of the whole 3-D parameter (``model.layers.0.mlp.experts.down_proj``)."""
        return f"{self.name}.{param}"

    def leaf(self, param: str) -> Tensor:
        """The dense 3-D tensor of ``param`` (under its mask, if any)."""
        t = _param(self.module, param)
        assert t is not None
        return t

    def matrix(self, param: str, expert: int) -> Tensor:
        """Expert ``expert``'s effective (masked) weight of ``param`` as an (out, in) float32 copy."""
        w = getattr(self.module, param)[expert].detach()
        return (w.t() if self.transposed else w).float().contiguous().clone()

    def intermediate(self) -> int:
        """The experts' intermediate width."""
        down = self.leaf(self.down)
        return down.shape[1] if self.transposed else down.shape[2]


def as_fused_experts(name: str, module: nn.Module) -> FusedExperts | None:
    """The description of ``module`` when it holds fused 3-D expert weights, else None."""
    up = "gate_up_proj" if _param(module, "gate_up_proj") is not None else "up_proj"
    w_up, w_down = _param(module, up), _param(module, "down_proj")
    if not (isinstance(w_up, Tensor) and isinstance(w_down, Tensor) and w_up.dim() == 3 and w_down.dim() == 3):
        return None
    if w_up.shape[0] != w_down.shape[0]:
        return None
    gated = bool(getattr(module, "has_gate", up == "gate_up_proj"))
    if hasattr(module, "is_transposed"):
        transposed = bool(module.is_transposed)
    else:  # no layout marker: (out, in) matrices chain as up (E, I', H) → down (E, H, I); (in, out) as (E, H, I') → (E, I, H)
        transposed = w_up.shape[1] == w_down.shape[2] and w_up.shape[2] != w_down.shape[1]
    return FusedExperts(name, module, up, "down_proj", int(w_up.shape[0]), transposed, gated,
                        bool(getattr(module, "is_concatenated", True)), _takes_routing(module))


def _takes_routing(module: nn.Module) -> bool:
    """Whether the experts module is called with the router's choice (``top_k_index``) beside the hidden states."""
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return True
    return len(params) > 1


def fused_experts(model: nn.Module, prefix: str = "") -> list[FusedExperts]:
    """Every fused-experts module of ``model`` (names prefixed with ``prefix``)."""
    found = []
    for name, m in model.named_modules():
        if ".parametrizations." in f".{name}." or name.endswith("parametrizations"):
            continue
        fe = as_fused_experts(f"{prefix}.{name}" if prefix and name else (prefix or name), m)
        if fe is not None:
            found.append(fe)
    return found


def _routing(fused: FusedExperts, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    hidden = args[0] if args else kwargs["hidden_states"]
    index = args[1] if len(args) > 1 else kwargs["top_k_index"]
    return hidden, index


def expert_activation(fused: FusedExperts, expert: int, x: Tensor) -> Tensor:
    """What expert ``expert``'s down projection reads for inputs ``x`` (tokens, hidden)."""
    m = fused.module
    w = getattr(m, fused.up)[expert]
    h = x @ w if fused.transposed else x @ w.t()
    bias = getattr(m, f"{fused.up}_bias", None)
    if isinstance(bias, Tensor):
        h = h + bias[expert]
    if fused.gated:
        return m._apply_gate(h) if hasattr(m, "_apply_gate") else _default_gate(m, h)
    return m.act_fn(h)


def _default_gate(m: nn.Module, h: Tensor) -> Tensor:
    gate, up = h.chunk(2, dim=-1)
    return m.act_fn(gate) * up


def expert_inputs(fused: FusedExperts, args: tuple, kwargs: dict) -> Iterator[tuple[int, str, Tensor]]:
    """For one call of the experts module: ``(expert, param, inputs)`` for each expert that received
    tokens — its up/gate projection's inputs (the routed tokens) and its down projection's inputs."""
    if not fused.routed:
        yield from _sliced_inputs(fused, args[0] if args else kwargs["hidden_states"])
        return
    hidden, index = _routing(fused, args, kwargs)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    index = index.reshape(hidden.shape[0], -1)
    with torch.no_grad():
        for e in range(fused.num_experts):
            rows = (index == e).any(-1).nonzero().reshape(-1)
            if rows.numel() == 0:
                continue
            x = hidden[rows]
            yield e, fused.up, x
            yield e, fused.down, expert_activation(fused, e, x)


def _sliced_inputs(fused: FusedExperts, hidden: Tensor) -> Iterator[tuple[int, str, Tensor]]:
    """Llama 4's dispatch: expert ``e`` reads rows ``e·T … (e+1)·T`` of ``hidden`` (scaled by the router);
    the tokens it was sent are the rows that are not all zeros."""
    slices = hidden.reshape(fused.num_experts, -1, hidden.shape[-1])
    with torch.no_grad():
        for e in range(fused.num_experts):
            x = slices[e]
            x = x[(x != 0).any(-1)]
            if x.shape[0] == 0:
                continue
            yield e, fused.up, x
            yield e, fused.down, expert_activation(fused, e, x)


def expert_rows_for_neurons(fused: FusedExperts, keep: Tensor) -> Tensor:
    """Rows of one expert's (out, in) up/gate matrix that hold the intermediate neurons ``keep``."""
    if not fused.gated:
        return keep
    inter = fused.intermediate()
    if fused.concatenated:
        return torch.cat([keep, keep + inter])
    return torch.stack([2 * keep, 2 * keep + 1], dim=1).reshape(-1)


def neuron_of_rows(fused: FusedExperts) -> Tensor:
    """The intermediate neuron each row of an expert's (out, in) up/gate matrix belongs to."""
    inter = fused.intermediate()
    if not fused.gated:
        return torch.arange(inter)
    rows = torch.arange(2 * inter)
    return rows % inter if fused.concatenated else rows // 2


def expert_targets(model: nn.Module, scope: Any = None) -> list[Any]:
    """The fused 3-D expert parameters of ``model`` that ``scope`` allows to prune, as
    :class:`~prunekit.core.scope.Target` objects named ``<experts module>.<param>``.

    They are in scope wherever ``nn.Linear`` is (an expert is a Linear layer per expert); ``include`` /
    ``exclude`` globs match the parameter's name or the experts module's.
    """
    import fnmatch

    from ..core.scope import Target, as_scope

    sc = as_scope(scope)
    if not any(issubclass(nn.Linear, t) for t in sc.types):
        return []

    def hit(names: tuple[str, str], globs: Any) -> bool:
        return any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)

    found = []
    for fe in fused_experts(model):
        for param in fe.params:
            names = (fe.target_name(param), fe.name)
            if sc.include is not None and not hit(names, sc.include):
                continue
            if hit(names, sc.exclude):
                continue
            found.append(Target(fe.target_name(param), fe.module, param))
    return found
