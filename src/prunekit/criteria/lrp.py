"""LRP relevance: "Pruning by Explaining" (Yeom et al., Pattern Recognition 2021).

Layer-wise relevance propagation starts from the logit of each example's true class and hands it back
layer by layer; a weight's relevance is the share of its layer's output relevance that flowed through it,
summed over the data. Weights with the least relevance go first.

Rules, at every Linear/Conv (``rule``):

- ``epsilon``: R_j = a_j · Σ_i w_ij · R_i / (z_i + ε·sign(z_i)), the weight's share R_ij = a_j · w_ij · R_i / z_i.
- ``zplus``: the same with only the positive weights (z⁺-rule, LRP-αβ with α=1, β=0), for layers fed by ReLUs;
  negative weights get no relevance.
- ``composite`` (default): z⁺ at convolutions, ε at Linear layers, as the paper's implementation does.

BatchNorm and average pooling pass relevance by the ε-rule (their bias absorbs its share); ReLU, max pooling
and reshapes pass it as their gradient does (the relevance reaching an inactive unit is already zero). With
zero biases and ε → 0 relevance is conserved: every layer's input relevance sums to the true-class logit.
The score is the relevance summed over the batches (it may be negative with the ε-rule: such weights speak
against the class and go first).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.scope import Target
from ..infra.calling import call_model, output_tensor
from .base import ScoreContext, eval_mode, register_criterion

RULES = ("epsilon", "zplus", "composite")
_LINEAR = (nn.Linear, nn.modules.conv._ConvNd)
_PASS_BY_EPSILON = (nn.modules.batchnorm._BatchNorm, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _stabilize(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _weighted(module: nn.Module, positive: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """z(a, w) of a Linear/Conv with the weight as an argument (the masked weight forward saw is passed in, so its
    relevance can be taken); the z⁺-rule keeps only positive weights and drops the bias."""
    bias = None if positive or module.bias is None else module.bias.detach()

    def z(a: Tensor, w: Tensor) -> Tensor:
        w = w.clamp(min=0) if positive else w
        return F.linear(a, w, bias) if isinstance(module, nn.Linear) else module._conv_forward(a, w, bias)

    return z


class _Relevance(torch.autograd.Function):
    """Forward: the module's output unchanged. Backward: the input relevance a ⊙ Jᵀ(R / z) of the rule, and the
    weight relevance w ⊙ ∂(z · R/z)/∂w recorded on the side."""

    @staticmethod
    def forward(ctx, a: Tensor, z: Tensor, fn, weight, eps, sink, quiet) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a)
        ctx.fn, ctx.weight, ctx.eps, ctx.sink, ctx.quiet = fn, weight, eps, sink, quiet
        return z.detach().clone()

    @staticmethod
    def backward(ctx, relevance: Tensor):  # type: ignore[override]
        (a,) = ctx.saved_tensors
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(True)
            if ctx.weight is not None:  # Linear/Conv: z(a, w) with the weight forward saw
                w_ = ctx.weight.detach().requires_grad_(True)
                z = ctx.fn(a_, w_)
                wanted = [a_, w_]
            else:  # BatchNorm, average pooling: the module itself, not hooked again
                ctx.quiet["on"] = True
                try:
                    z = ctx.fn(a_)
                finally:
                    ctx.quiet["on"] = False
                wanted = [a_]
            s = (relevance / _stabilize(z, ctx.eps)).detach()
            grads = torch.autograd.grad(z, wanted, s, allow_unused=True)
        if ctx.sink is not None and len(grads) > 1 and grads[1] is not None:
            ctx.sink(ctx.weight.detach() * grads[1].detach(), relevance.detach())
        return a.detach() * grads[0], None, None, None, None, None, None


def _rule_of(module: nn.Module, rule: str) -> str:
    if rule == "composite":
        return "zplus" if isinstance(module, nn.modules.conv._ConvNd) else "epsilon"
    return rule


def relevance(model: nn.Module, modules: dict[str, nn.Module], batches, rule: str = "composite",
              epsilon: float = 1e-6, units: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
    """LRP weight relevance of ``modules`` (name → Linear/Conv) summed over ``batches`` of (inputs, labels),
    and each batch's input relevance (for checks of conservation). With ``units`` (a dict, filled in place),
    also each module's output-unit relevance (per output channel / feature, summed over examples and
    positions): the filter relevance the paper prunes by. Changes nothing in the model."""
    if rule not in RULES:
        raise ValueError(f"lrp rule must be one of {', '.join(RULES)}; got {rule!r}")
    if not epsilon > 0:
        raise ValueError(f"lrp epsilon must be > 0 (it keeps R/z finite where z is 0); got {epsilon}")
    totals: dict[str, Tensor] = {}
    by_id = {id(m): n for n, m in modules.items()}

    quiet = {"on": False}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if quiet["on"] or not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
            return None
        a = args[0]
        name = by_id.get(id(module))
        weight, sink = None, None
        if isinstance(module, _LINEAR):
            fn = _weighted(module, positive=_rule_of(module, rule) == "zplus")
            weight = module.weight.detach()  # masked, if the module carries a mask
        else:
            fn = module
        if name is not None:
            def sink(r: Tensor, out: Tensor, name: str = name) -> None:
                r = r.double().cpu()
                totals[name] = totals[name] + r if name in totals else r
                if units is not None:
                    u = out.double().movedim(1, 0).reshape(out.shape[1], -1).sum(1).cpu() if out.dim() > 2 \
                        else out.double().sum(0).cpu()
                    units[name] = units[name] + u if name in units else u
        return _Relevance.apply(a, output, fn, weight, epsilon, sink, quiet)

    hooked = [m for m in model.modules() if isinstance(m, _LINEAR + _PASS_BY_EPSILON)]
    handles = [m.register_forward_hook(hook) for m in hooked]
    inputs_relevance = []
    try:
        with eval_mode(model), torch.enable_grad():
            n = 0
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError("lrp needs batches of (inputs, class labels): it starts from each "
                                     "example's true-class logit")
                x, labels = batch
                x = x.detach().clone().requires_grad_(True)
                out = output_tensor(call_model(model, x))
                if out.dim() != 2 or labels.dim() != 1 or labels.shape[0] != out.shape[0]:
                    raise ValueError(f"lrp needs logits of shape (batch, classes) and one label per example; got "
                                     f"logits {tuple(out.shape)} and labels {tuple(labels.shape)}")
                start = torch.zeros_like(out).scatter_(1, labels.long().view(-1, 1).to(out.device),
                                                       out.detach().gather(1, labels.long().view(-1, 1).to(out.device)))
                (r_in,) = torch.autograd.grad(out, x, start)
                inputs_relevance.append(r_in.detach())
                n += 1
            if n == 0:
                raise ValueError("the data loader yielded no batch; lrp needs at least one")
    finally:
        for h in handles:
            h.remove()
    for name, m in modules.items():
        totals.setdefault(name, torch.zeros(m.weight.shape, dtype=torch.float64))
    return totals, inputs_relevance


@register_criterion("lrp", needs_data=True)
def lrp(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by its LRP relevance on the data, summed over the batches."""
    cfg = ctx.config
    rule = getattr(cfg, "rule", "composite")
    epsilon = getattr(cfg, "epsilon", 1e-6)
    bad = [t.name for t in targets if not isinstance(t.module, _LINEAR) or t.param != "weight"]
    if bad:
        raise ValueError(f"lrp scores Linear and Conv weights only; {', '.join(bad[:3])} are not: narrow the scope "
                         "(scope={'types': ['Linear', 'Conv2d']})")
    totals, _ = relevance(model, {t.name: t.module for t in targets}, ctx.batches(), rule, epsilon)
    return {t.name: totals[t.name].float() for t in targets}
