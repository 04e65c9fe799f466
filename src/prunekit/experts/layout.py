"""Where a mixture-of-experts layer keeps its router and its experts, in every layout prunekit handles.

- **fused** (transformers 5: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, …): an experts module
  with 3-D parameters ``gate_up_proj[E, 2I, H]`` (gate rows then up rows) and ``down_proj[E, H, I]``,
  and a router module holding ``weight[E, H]`` (DeepSeek-V3 adds the buffer
  ``e_score_correction_bias[E]``);
- **fused, transposed and interleaved** (GPT-OSS): ``gate_up_proj[E, H, 2I]`` with gate and up columns
  alternating, ``down_proj[E, I, H]``, and per-expert biases; the router has a bias;
- **per-expert modules** (transformers 4 and remote-code checkpoints): ``experts`` is an
  ``nn.ModuleList`` of MLPs (``w1/w3/w2`` or ``gate_proj/up_proj/down_proj``) and the router an
  ``nn.Linear(H, E)``.

:class:`MoeLayer` gives them one interface: route tokens (with any set of experts masked out, exactly as
if they had been removed), run one expert, read or write one expert's weights, keep a subset of the
experts. Routing is reimplemented for the three rules transformers uses (softmax → top-k → optional
renormalisation; top-k → softmax; DeepSeek-V3's sigmoid with group-limited top-k) and checked against
the router's own output when the layer is found, so a rule it does not know is refused, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_LEGACY_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))


@dataclass
class Routing:
    """How a router turns logits into the top-k experts and their weights."""

    rule: str  # "softmax_topk" | "topk_softmax" | "sigmoid_group"
    top_k: int
    renormalize: bool = False
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0


@dataclass
class MoeLayer:
    """One MoE layer: its block, router and experts, and how it routes."""

    name: str
    block: nn.Module
    router: nn.Module
    router_attr: str
    experts: nn.Module
    experts_attr: str
    layout: str  # "fused" | "fused_transposed" | "modulelist"
    routing: Routing
    shared: list[str] = field(default_factory=list)  # names of shared-expert submodules (kept as they are)

    # ------------------------------------------------------------------------------------------ facts
    @property
    def num_experts(self) -> int:
        return int(self.router.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.router.weight.shape[1])

    def expert_params(self) -> int:
        """Parameters of the routed experts (router not included)."""
        return sum(p.numel() for p in self.experts.parameters())

    # ---------------------------------------------------------------------------------------- routing
    def logits(self, x: Tensor) -> Tensor:
        """Router logits ``(T, E)`` of tokens ``x`` ``(T, H)``, in float32."""
        w = self.router.weight
        bias = getattr(self.router, "bias", None)
        return F.linear(x.float(), w.float(), bias.float() if isinstance(bias, Tensor) else None)

    def route(self, x: Tensor, removed: Tensor | None = None, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Top-k ``(weights, indices)``, each ``(T, k)``, with the experts flagged in ``removed`` (a bool ``(E,)``)
        routed as if they had been deleted (their router rows gone)."""
        r = self.routing
        lg = self.logits(x) if logits is None else logits
        if removed is not None and bool(removed.any()):
            keep = ~removed
        else:
            keep = None
        if r.rule == "softmax_topk":
            if keep is not None:
                lg = lg.masked_fill(~keep, float("-inf"))
            probs = torch.softmax(lg, dim=-1)
            w, idx = torch.topk(probs, r.top_k, dim=-1)
            if r.renormalize:
                w = w / w.sum(-1, keepdim=True)
            return w, idx
        if r.rule == "topk_softmax":
            if keep is not None:
                lg = lg.masked_fill(~keep, float("-inf"))
            top, idx = torch.topk(lg, r.top_k, dim=-1)
            return torch.softmax(top, dim=-1), idx
        if r.rule == "sigmoid_group":
            scores = lg.sigmoid()
            bias = self.router.e_score_correction_bias.float()
            choice = scores + bias
            E, G = lg.shape[-1], r.n_group
            if keep is not None:
                choice = choice.masked_fill(~keep, float("-inf"))
            grouped = choice.view(-1, G, E // G)
            group_scores = grouped.topk(min(2, E // G), dim=-1)[0].sum(-1)
            if keep is not None:  # a group whose members are all gone cannot be chosen
                alive = keep.view(G, E // G).any(-1)
                group_scores = group_scores.masked_fill(~alive, float("-inf"))
            gidx = torch.topk(group_scores, k=r.topk_group, dim=-1, sorted=False)[1]
            gmask = torch.zeros_like(group_scores).scatter_(1, gidx, 1).bool()
            smask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
            choice = choice.masked_fill(~smask, float("-inf"))
            idx = torch.topk(choice, k=r.top_k, dim=-1, sorted=False)[1]
            w = scores.gather(1, idx)
            if r.renormalize:
                w = w / (w.sum(-1, keepdim=True) + 1e-20)
            return w * r.scaling, idx
        raise ValueError(f"unknown routing rule {r.rule!r}")

    # ---------------------------------------------------------------------------------------- experts
    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e``'s output on tokens ``x`` ``(T, H)`` (unweighted), computed by the model's own code."""
        if self.layout == "modulelist":
            return self.experts[e](x)
        idx = torch.full((x.shape[0], 1), e, dtype=torch.long, device=x.device)
        ones = torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)
        return self.experts(x, idx, ones)

    def _fused_params(self) -> dict[str, nn.Parameter]:
        E = self.num_experts
        return {n: p for n, p in self.experts.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[0] == E}

    def intermediate_size(self) -> int:
        """Width of one expert's hidden layer."""
        return int(self.get_expert(0)["gate"][0].shape[self.get_expert(0)["gate"][1]])

    def get_expert(self, e: int) -> dict[str, tuple[Tensor, int | None]]:
        """Expert ``e``'s tensors as ``{role: (tensor, neuron_axis)}`` — roles ``gate``, ``up``, ``down`` (and
        ``gate_bias``, ``up_bias``, ``down_bias`` where present); ``neuron_axis`` indexes the hidden neurons
        (None for a tensor without one). Copies, in float32."""
        if self.layout == "modulelist":
            mod = self.experts[e]
            names = next(n for n in _LEGACY_NAMES if all(hasattr(mod, a) for a in n))
            g, u, d = (getattr(mod, a) for a in names)
            out = {"gate": (g.weight.detach().float().clone(), 0), "up": (u.weight.detach().float().clone(), 0),
                   "down": (d.weight.detach().float().clone(), 1)}
            for role, lin, axis in (("gate_bias", g, 0), ("up_bias", u, 0), ("down_bias", d, None)):
                if getattr(lin, "bias", None) is not None:
                    out[role] = (lin.bias.detach().float().clone(), axis)
            return out
        p = self._fused_params()
        gu = p["gate_up_proj"][e].detach().float()
        down = p["down_proj"][e].detach().float()
        if self.layout == "fused":
            inter = gu.shape[0] // 2
            out = {"gate": (gu[:inter].clone(), 0), "up": (gu[inter:].clone(), 0), "down": (down.clone(), 1)}
            if "gate_up_proj_bias" in p:
                b = p["gate_up_proj_bias"][e].detach().float()
                out["gate_bias"], out["up_bias"] = (b[:inter].clone(), 0), (b[inter:].clone(), 0)
        else:  # GPT-OSS: [H, 2I] with gate/up interleaved, down [I, H]
            out = {"gate": (gu[:, ::2].clone(), 1), "up": (gu[:, 1::2].clone(), 1), "down": (down.clone(), 0)}
            if "gate_up_proj_bias" in p:
                b = p["gate_up_proj_bias"][e].detach().float()
                out["gate_bias"], out["up_bias"] = (b[::2].clone(), 0), (b[1::2].clone(), 0)
        if "down_proj_bias" in p:
            out["down_bias"] = (p["down_proj_bias"][e].detach().float().clone(), None)
        return out

    @torch.no_grad()
    def set_expert(self, e: int, tensors: dict[str, Tensor]) -> None:
        """Write expert ``e``'s tensors (roles as :meth:`get_expert` returns them)."""
        if self.layout == "modulelist":
            mod = self.experts[e]
            names = next(n for n in _LEGACY_NAMES if all(hasattr(mod, a) for a in n))
            lins = dict(zip(("gate", "up", "down"), (getattr(mod, a) for a in names)))
            for role, t in tensors.items():
                lin = lins[role.replace("_bias", "")]
                target = lin.bias if role.endswith("_bias") else lin.weight
                target.copy_(t.to(target.dtype))
            return
        p = self._fused_params()
        gu, down = p["gate_up_proj"], p["down_proj"]
        if self.layout == "fused":
            inter = gu.shape[1] // 2
            gu[e, :inter].copy_(tensors["gate"].to(gu.dtype))
            gu[e, inter:].copy_(tensors["up"].to(gu.dtype))
            if "gate_bias" in tensors:
                p["gate_up_proj_bias"][e, :inter].copy_(tensors["gate_bias"])
                p["gate_up_proj_bias"][e, inter:].copy_(tensors["up_bias"])
        else:
            gu[e, :, ::2].copy_(tensors["gate"].to(gu.dtype))
            gu[e, :, 1::2].copy_(tensors["up"].to(gu.dtype))
            if "gate_bias" in tensors:
                p["gate_up_proj_bias"][e, ::2].copy_(tensors["gate_bias"])
                p["gate_up_proj_bias"][e, 1::2].copy_(tensors["up_bias"])
        down[e].copy_(tensors["down"].to(down.dtype))
        if "down_bias" in tensors:
            p["down_proj_bias"][e].copy_(tensors["down_bias"])

    # ---------------------------------------------------------------------------------------- surgery
    @torch.no_grad()
    def keep_(self, keep: list[int]) -> None:
        """Keep only experts ``keep`` (in that order): router rows, router biases and expert weights together;
        the modules' ``num_experts`` attributes follow."""
        E, n = self.num_experts, len(keep)
        idx = torch.tensor(keep, dtype=torch.long)
        router = self.router
        if isinstance(router, nn.Linear):
            new = nn.Linear(router.in_features, n, bias=router.bias is not None,
                            dtype=router.weight.dtype, device=router.weight.device)
            new.weight.copy_(router.weight[idx.to(router.weight.device)])
            if router.bias is not None:
                new.bias.copy_(router.bias[idx.to(router.bias.device)])
            new.train(router.training)
            setattr(self.block, self.router_attr, new)
            self.router = new
        else:
            _slice_module_(router, E, idx)
        if self.layout == "modulelist":
            new_list = nn.ModuleList([self.experts[i] for i in keep])
            setattr(self.block, self.experts_attr, new_list)
            self.experts = new_list
        else:
            _slice_module_(self.experts, E, idx)
        for mod in (self.block, self.router, self.experts):
            for attr in ("num_experts", "num_local_experts", "n_routed_experts"):
                if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == E:
                    setattr(mod, attr, n)


def _slice_module_(module: nn.Module, E: int, idx: Tensor) -> None:
    """Index dim 0 of every direct parameter and buffer of ``module`` whose first dimension is ``E``."""
    for pname, param in list(module.named_parameters(recurse=False)):
        if param.dim() >= 1 and param.shape[0] == E:
            setattr(module, pname, nn.Parameter(param.data[idx.to(param.device)].clone(),
                                                requires_grad=param.requires_grad))
    for bname, buf in list(module.named_buffers(recurse=False)):
        if buf is not None and buf.dim() >= 1 and buf.shape[0] == E:
            persistent = bname not in module._non_persistent_buffers_set
            module.register_buffer(bname, buf[idx.to(buf.device)].clone(), persistent=persistent)


@torch.no_grad()
def routed_output(layer: MoeLayer, x: Tensor, removed: Tensor | None = None,
                  routing: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The routed experts' weighted output on tokens ``x`` (shared experts not included)."""
    w, idx = routing if routing is not None else layer.route(x, removed)
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(idx).tolist():
        tok, slot = torch.where(idx == e)
        y = layer.expert_forward(e, x[tok]).float()
        out.index_add_(0, tok, y * w[tok, slot].unsqueeze(-1).float())
    return out.to(x.dtype)
