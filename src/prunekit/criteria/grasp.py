"""GraSP: keep the weights that preserve gradient flow (Wang et al., 2020).

The paper removes the weights with the largest −θ ⊙ Hg; in prunekit's convention (higher = keep)
the score is θ ⊙ Hg. Logits are divided by the config's temperature (``GraspConfig``: 200, as the paper's code does).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, batch_loss, check_loss, eval_mode, leaves, register_criterion


@register_criterion("grasp", needs_data=True)
def grasp(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by θ ⊙ Hg, where g is the loss gradient and H the Hessian."""
    if getattr(ctx.config, "temperature", None) is None:
        raise ValueError("grasp reads its softmax temperature from its config: pass ScoreContext(config=GraspConfig(...))")
    temperature = float(ctx.config.temperature)
    params = leaves(targets)
    with eval_mode(model), torch.enable_grad():
        g = [torch.zeros_like(p) for p in params]
        n = 0
        for batch in ctx.batches():
            loss = batch_loss(model, batch, ctx.loss_fn, temperature)
            check_loss(loss, n)
            for acc, gi in zip(g, torch.autograd.grad(loss, params, allow_unused=True)):
                if gi is not None:
                    acc += gi.detach()
            n += 1
        if n == 0:
            raise ValueError("the data loader yielded no batch; grasp needs at least one")
        hg = [torch.zeros_like(p) for p in params]
        for batch in ctx.batches():
            loss = batch_loss(model, batch, ctx.loss_fn, temperature)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            z = sum((gi * gd).sum() for gi, gd in zip(grads, g) if gi is not None)
            for acc, h in zip(hg, torch.autograd.grad(z, params, allow_unused=True)):
                if h is not None:
                    acc += h.detach()
    return {t.name: (t.module.weight.detach() * h).float().cpu() for t, h in zip(targets, hg)}
