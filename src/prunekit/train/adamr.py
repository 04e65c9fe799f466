"""AdamR: Adam whose decoupled decay pulls each weight toward its pretrained value ("DARE the Extreme", Deng et al.).

DARE drops delta parameters (fine-tuned minus pretrained weights) at random and rescales the survivors by
``1/density``; the rescaled noise grows with the deltas' mean and variance, so DARE fails on fine-tunes whose
deltas are large. DAREx-L2 regularises the deltas *during* fine-tuning, so that a later drop is cheap: AdamR is
AdamW whose weight decay acts on ``θ − θ₀`` (``θ₀`` the weights the optimizer was built on) instead of ``θ``,
with AdamS's "stable" scaling (the decay divided by the root of the mean second moment over every parameter):

    v̄ = mean over every element of v̂
    θ ← θ − lr · λ / √v̄ · (θ − θ₀)          (``reg="l2"``; ``reg="l1"``: · sign(θ − θ₀))
    θ ← θ − lr · m̂ / (√v̂ + ε)               (Adam's step, bias-corrected m̂ and v̂)

The decay is taken from θ before Adam's step, as the authors' code does. L2 shrinks every delta (for DARE);
L1 pushes small deltas to exactly θ₀ (for magnitude pruning of the deltas).

    opt = AdamR(model.parameters(), lr=1e-4, reg="l2", reg_weight=0.1)    # built on the pretrained weights
    trainer = transformers.Trainer(model, args, optimizers=(opt, None), ...)

The anchors θ₀ live in the optimizer's state, one copy of every parameter it trains, so its ``state_dict`` resumes
a run with the pretrained anchors, not the weights at the time of the resume.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal

import torch
from pydantic import Field

from ..core.config import Config


class AdamRConfig(Config):
    """Settings of :class:`AdamR` (its defaults are only here)."""

    reg: Literal["l2", "l1"] = "l2"
    lr: float = Field(1e-4, gt=0)
    reg_weight: float = Field(0.1, ge=0, description="λ: the strength of the pull toward the pretrained weights")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, ge=0)


class AdamR(torch.optim.Optimizer):
    """Adam with a stable, decoupled L2 (or L1) pull of every parameter toward its value when the optimizer was built.

    ``params`` as for any torch optimizer (parameter groups may set their own ``lr`` and ``reg_weight``); the other
    keywords are :class:`AdamRConfig`'s fields, or pass ``config=``."""

    def __init__(self, params: Iterable[Any], config: AdamRConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError("AdamR: pass either config= or its fields as keywords, not both")
        cfg = config if config is not None else AdamRConfig.parse(kwargs, where="AdamR")
        b1, b2 = cfg.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"AdamR: betas must lie in [0, 1), got {cfg.betas}")
        self.config = cfg
        defaults = {"lr": cfg.lr, "reg_weight": cfg.reg_weight, "betas": cfg.betas, "eps": cfg.eps, "reg": cfg.reg}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as torch's optimizers do); its parameters' current values become their anchors θ₀."""
        group = {**self.defaults, **param_group}
        if group["reg"] not in ("l2", "l1"):
            raise ValueError(f"AdamR: reg must be 'l2' or 'l1', got {group['reg']!r}")
        if group["reg_weight"] < 0 or group["lr"] <= 0:
            raise ValueError(f"AdamR: a group's lr must be > 0 and reg_weight ≥ 0, got lr={group['lr']}, "
                             f"reg_weight={group['reg_weight']}")
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p]["anchor"] = p.detach().clone()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One AdamR step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if any(p.grad is not None and p.grad.is_sparse for g in self.param_groups for p in g["params"]):
            raise RuntimeError("AdamR does not support sparse gradients (nothing was updated); use a dense "
                               "embedding (sparse=False)")
        live: list[tuple[dict, torch.Tensor, dict]] = []
        total, count = 0.0, 0
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                state["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                total += float(state["exp_avg_sq"].sum(dtype=torch.float64)) / (1 - b2 ** state["step"])
                count += p.numel()
                live.append((group, p, state))
        if not live:
            return loss
        root = math.sqrt(total / count) or 1.0  # √v̄; all-zero gradients leave the decay unscaled
        for group, p, state in live:
            b1, b2 = group["betas"]
            if group["reg_weight"]:
                delta = p - state["anchor"]
                pull = delta.sign_() if group["reg"] == "l1" else delta
                p.add_(pull, alpha=-group["lr"] * group["reg_weight"] / root)
            denom = (state["exp_avg_sq"] / (1 - b2 ** state["step"])).sqrt_().add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** state["step"]))
        return loss

