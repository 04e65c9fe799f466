"""Finding the MoE layers of a model and the routing rule each follows.

A layer is a module with an ``experts`` child — fused 3-D parameters (:data:`MoeLayer.layout` ``fused`` or
``fused_transposed``, read from transformers' ``is_transposed`` / ``is_concatenated`` marks where present)
or an ``nn.ModuleList`` of MLPs — and a router child (``gate`` or ``router``) with one weight row per
expert. The routing rule is the candidate that reproduces the router's own output on a random probe
(or, for an ``nn.Linear`` router without shared experts, the whole block's output).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .layout import _LEGACY_NAMES, MoeLayer, Routing, routed_output

def _fused_layout(experts: nn.Module) -> str | None:
    params = dict(experts.named_parameters(recurse=False))
    gu, down = params.get("gate_up_proj"), params.get("down_proj")
    if gu is None or down is None or gu.dim() != 3 or down.dim() != 3:
        return None
    transposed = getattr(experts, "is_transposed", None)
    concatenated = getattr(experts, "is_concatenated", None)
    if transposed is None:
        std = gu.shape[1] == 2 * down.shape[2] and gu.shape[2] == down.shape[1]
        tr = gu.shape[2] == 2 * down.shape[1] and gu.shape[1] == down.shape[2]
        if std == tr:
            raise ValueError(f"cannot tell the layout of fused experts {type(experts).__name__} "
                             f"(gate_up_proj {tuple(gu.shape)}, down_proj {tuple(down.shape)})")
        transposed = tr
    if transposed:
        if concatenated:
            raise ValueError(f"{type(experts).__name__}: transposed experts with concatenated gate/up are not supported")
        return "fused_transposed"
    if concatenated is False:
        raise ValueError(f"{type(experts).__name__}: interleaved gate/up without transposition is not supported")
    return "fused"


def _legacy_experts(experts: nn.Module) -> bool:
    return isinstance(experts, nn.ModuleList) and len(experts) > 1 and all(
        any(all(isinstance(getattr(m, a, None), nn.Linear) for a in names) for names in _LEGACY_NAMES) for m in experts)


def _router_of(block: nn.Module, n_experts: int, hidden: int | None) -> tuple[str, nn.Module] | None:
    for attr in ("gate", "router"):
        r = getattr(block, attr, None)
        w = getattr(r, "weight", None)
        if isinstance(w, Tensor) and w.dim() == 2 and w.shape[0] == n_experts and (hidden is None or w.shape[1] == hidden):
            return attr, r
    return None


def _top_k(block: nn.Module, router: nn.Module, config: Any) -> int:
    for obj in (router, block):
        for attr in ("top_k", "num_experts_per_tok"):
            v = getattr(obj, attr, None)
            if isinstance(v, int):
                return v
    v = getattr(config, "num_experts_per_tok", None)
    if isinstance(v, int):
        return v
    raise ValueError(f"cannot find the top-k of MoE block {type(block).__name__} (no top_k / num_experts_per_tok)")


def _candidates(block: nn.Module, router: nn.Module, top_k: int, config: Any) -> list[Routing]:
    if hasattr(router, "e_score_correction_bias"):
        return [Routing("sigmoid_group", top_k, bool(getattr(router, "norm_topk_prob", True)),
                        int(getattr(router, "num_group", None) or getattr(config, "n_group", 1) or 1),
                        int(getattr(router, "topk_group", None) or getattr(config, "topk_group", 1) or 1),
                        float(getattr(router, "routed_scaling_factor", None) or getattr(config, "routed_scaling_factor", 1.0)))]
    return [Routing("softmax_topk", top_k, True), Routing("softmax_topk", top_k, False), Routing("topk_softmax", top_k)]


def _dense(w: Tensor, idx: Tensor, E: int) -> Tensor:
    return torch.zeros(w.shape[0], E, dtype=torch.float32).scatter_add_(1, idx.long(), w.float())


@torch.no_grad()
def _match_routing(layer: MoeLayer, candidates: list[Routing], config: Any) -> Routing:
    """The candidate rule that reproduces the router's own output on a random probe (or, for an ``nn.Linear``
    router, the whole block's output); a ValueError when none does."""
    E, H = layer.num_experts, layer.hidden_size
    gen = torch.Generator().manual_seed(0)
    dtype = layer.router.weight.dtype
    x = torch.randn(64, H, generator=gen).to(dtype) * 4
    if not isinstance(layer.router, nn.Linear):
        out = layer.router(x)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ValueError(f"router {type(layer.router).__name__} of {layer.name} does not return "
                             "(logits, weights, indices); prunekit cannot route it")
        ref = _dense(out[1], out[2], E)
        for cand in candidates:
            layer.routing = cand
            w, idx = layer.route(x)
            if torch.allclose(_dense(w, idx, E), ref, atol=1e-5, rtol=1e-4):
                return cand
        raise ValueError(f"the router of {layer.name} ({type(layer.router).__name__}) follows a rule prunekit does not "
                         "know (softmax→top-k, top-k→softmax, DeepSeek-V3's grouped sigmoid)")
    # per-expert modules: check against the block itself when it has no shared expert; else trust the config
    if layer.shared:
        flag = getattr(layer.block, "norm_topk_prob", getattr(config, "norm_topk_prob", True))
        return Routing("softmax_topk", candidates[0].top_k, bool(flag))
    xb = x.reshape(4, 16, H)
    try:
        ref = layer.block(xb)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot verify the rule
        raise ValueError(f"cannot run MoE block {layer.name} to check its routing: {exc}") from exc
    ref = (ref[0] if isinstance(ref, tuple) else ref).reshape(-1, H).float()
    for cand in candidates[:2]:
        layer.routing = cand
        if torch.allclose(routed_output(layer, x).float(), ref, atol=1e-4, rtol=1e-3):
            return cand
    raise ValueError(f"MoE block {layer.name} ({type(layer.block).__name__}): its output matches no routing rule "
                     "prunekit knows; its experts cannot be pruned safely")


def find_moe_layers(model: nn.Module, prefix: str = "") -> list[MoeLayer]:
    """Every MoE layer in ``model`` (a whole model or one block), in module order."""
    config = getattr(model, "config", None)
    found: list[MoeLayer] = []
    from torch.nn.utils import parametrize

    for name, block in model.named_modules():
        experts = getattr(block, "experts", None)
        if not isinstance(experts, nn.Module) or block is experts:
            continue
        if parametrize.is_parametrized(experts) or any(parametrize.is_parametrized(m) for m in experts.modules()):
            raise ValueError(f"the experts of {prefix + '.' if prefix else ''}{name} carry pruning masks; make them "
                             "permanent first (prunekit.core.mask.finalize_), then prune or merge experts")
        if _legacy_experts(experts):
            layout, n = "modulelist", len(experts)
            hidden = None
        else:
            layout = _fused_layout(experts)
            if layout is None:
                continue
            gu = experts.gate_up_proj
            n = int(gu.shape[0])
            hidden = int(gu.shape[2] if layout == "fused" else gu.shape[1])
        r = _router_of(block, n, hidden)
        if r is None:
            continue
        attr, router = r
        cfg = config if config is not None else getattr(experts, "config", None)
        top_k = _top_k(block, router, cfg)
        shared = [c for c, _ in block.named_children() if c.startswith("shared_expert")]
        full = f"{prefix}.{name}" if prefix and name else (prefix or name)
        layer = MoeLayer(full, block, router, attr, experts, "experts", layout, Routing("softmax_topk", top_k), shared)
        layer.routing = _match_routing(layer, _candidates(block, router, top_k, cfg), cfg)
        found.append(layer)
    return found
