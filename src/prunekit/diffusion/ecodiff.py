"""EcoDiff (Zhang et al., "Effortless Efficiency: Low-Cost Pruning of Diffusion Models"): differentiable masks
on the UNet's units, learned end to end over the whole DDIM trajectory, with no weight retraining.

From the same initial noise and class, the masked UNet's final denoised image is matched to the unpruned
UNet's (MSE on x₀ after all ``steps`` DDIM steps), plus an L0 penalty on the masks (hard-concrete gates,
Louizos et al., or plain sigmoids), each unit weighted by its share of the parameters. Back-propagating
through every step would hold every step's activations; *time-step gradient checkpointing* keeps only the
latents between steps and recomputes one step at a time during the backward pass. The learned mask logits
then rank the units; the lowest are removed physically (``units.remove_units_``) until ``sparsity`` of the
UNet's parameters is gone. The UNet's weights never change.

Units here (``units.py``): GroupNorm groups of each resnet block's inner channels (the UNet's feed-forward
neurons) and self-attention heads; the paper masks attention heads and FFN neurons.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..core.config import Config
from ..core.fraction import Sparsity
from .ddpm import check_steps, schedule_of
from .units import UnitLayer, find_unit_layers, frozen, keep_lowest_removed, masked, remove_units_

# hard-concrete stretch (Louizos et al. 2018): gates on (GAMMA, ZETA), clipped to [0, 1]
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


class EcoDiffConfig(Config):
    """EcoDiff's settings: remove ``sparsity`` of the UNet's parameters; masks learned over ``steps``-step DDIM
    trajectories (eta 0) for ``iterations`` Adam steps of ``batch_size`` (class, noise) pairs; ``beta`` weighs
    the L0 term against the x₀ reconstruction MSE."""

    method: Literal["ecodiff"] = "ecodiff"
    sparsity: Sparsity = 0.2
    steps: int = Field(10, ge=1)
    iterations: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.1, gt=0)
    beta: float = Field(0.5, ge=0)
    mask: Literal["hard_concrete", "sigmoid"] = "hard_concrete"
    init_logit: float = 3.0
    checkpoint: bool = True
    seed: int = 0


def gate(logits: torch.Tensor, kind: str, *, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The mask in [0, 1] of ``logits``: a hard-concrete draw (``sample``) or its deterministic value, or a
    sigmoid."""
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    if sample:
        u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + logits) / BETA)
    else:
        s = torch.sigmoid(logits)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """P(gate ≠ 0) per unit: the expected L0 norm of hard-concrete gates (the sigmoid itself for ``sigmoid``)."""
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    return torch.sigmoid(logits - BETA * math.log(-GAMMA / ZETA))


def ddim_timesteps(unet, steps: int):
    """The DDIM scheduler ``ddpm.ddim_sample`` uses (the UNet's own schedule, x₀ clipped), set to ``steps``."""
    from diffusers import DDIMScheduler

    check_steps(unet, steps)
    s = schedule_of(unet)
    sched = DDIMScheduler(num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule,
                          beta_start=s.beta_start, beta_end=s.beta_end, clip_sample=True, set_alpha_to_one=False)
    sched.set_timesteps(steps)
    return sched


def trajectory(unet, x: torch.Tensor, labels: torch.Tensor, sched, *, checkpoint: bool = False) -> torch.Tensor:
    """x₀ after every DDIM step (eta 0) from noise ``x``: the arithmetic of ``ddpm.ddim_sample``, differentiable.
    With ``checkpoint`` only the latents between steps are kept for the backward pass (time-step gradient
    checkpointing) and each step is recomputed when its gradient is needed: run the backward pass while the
    same masks are in place (inside the ``units.masked`` block)."""
    from torch.utils.checkpoint import checkpoint as ckpt

    def step(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = unet(z, t.expand(z.shape[0]), class_labels=labels).sample
        return sched.step(eps, t, z, eta=0.0).prev_sample

    for t in sched.timesteps:
        x = ckpt(step, x, t, use_reentrant=False) if checkpoint and torch.is_grad_enabled() else step(x, t)
    return x.clamp(-1, 1)


@torch.no_grad()
def ddim_from(unet, noise: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int = 256) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from the given initial ``noise``: the scheduler and arithmetic of
    ``ddpm.ddim_sample``, clipped to [-1, 1]."""
    sched = ddim_timesteps(unet, steps)
    was = unet.training
    unet.eval()
    try:
        return torch.cat([trajectory(unet, noise[i:i + batch_size], labels[i:i + batch_size], sched)
                          for i in range(0, len(labels), batch_size)])
    finally:
        unet.train(was)


def objective(unet, noise: torch.Tensor, labels: torch.Tensor, sched, target: torch.Tensor,
              logits: list[torch.Tensor], weights: list[torch.Tensor], cfg: EcoDiffConfig):
    """EcoDiff's two loss terms for one batch, under masks already in place: the x₀ MSE of the masked UNet's
    whole trajectory against ``target`` (the unpruned UNet's x₀ from the same ``noise``), and the
    parameter-weighted expected L0 of the gates."""
    x0 = trajectory(unet, noise, labels, sched, checkpoint=cfg.checkpoint)
    mse = (x0 - target).pow(2).mean()
    l0 = sum((w * open_probability(lg, cfg.mask)).sum() for w, lg in zip(weights, logits))
    return mse, l0


@dataclass
class EcoDiffMasks:
    """Learned mask logits (one ``[units]`` tensor per unit layer) and the loss curves of the learning."""

    layers: list[UnitLayer]
    logits: list[torch.Tensor]
    mse: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _config(cfg: EcoDiffConfig | None, kwargs: dict) -> EcoDiffConfig:
    if cfg is not None and kwargs:
        raise TypeError("pass an EcoDiffConfig or keywords, not both")
    return cfg if cfg is not None else EcoDiffConfig.parse(kwargs)


def _check(unet, cfg: EcoDiffConfig, layers: list[UnitLayer]) -> None:
    if getattr(unet.config, "num_class_embeds", None) is None:
        raise ValueError("EcoDiff here needs a class-conditional UNet2DModel (num_class_embeds set): the classes "
                         "are its prompts")
    ddim_timesteps(unet, cfg.steps)
    total = sum(p.numel() for p in unet.parameters())
    removable = sum(layer.params * (layer.units - 1) for layer in layers)
    if cfg.sparsity * total > removable:
        raise ValueError(f"sparsity={cfg.sparsity} asks for {cfg.sparsity * total:,.0f} parameters but the prunable "
                         f"units hold {removable:,} (one unit per layer stays); ask for at most "
                         f"{removable / total:.3f}")


def learn_masks(unet, cfg: EcoDiffConfig | None = None, *, progress: bool = False, **kwargs) -> EcoDiffMasks:
    """Learn EcoDiff's mask logits on ``unet`` (class-conditional ``UNet2DModel``) without changing it: its
    weights, their ``requires_grad`` and its train/eval mode are as before when this returns."""
    from tqdm.auto import tqdm

    cfg = _config(cfg, kwargs)
    layers = find_unit_layers(unet)
    _check(unet, cfg, layers)
    sched = ddim_timesteps(unet, cfg.steps)
    total = float(sum(layer.params * layer.units for layer in layers))
    weights = [torch.full((layer.units,), layer.params / total) for layer in layers]
    logits = [nn.Parameter(torch.full((layer.units,), float(cfg.init_logit))) for layer in layers]
    opt = torch.optim.Adam(logits, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_cls = int(unet.config.num_class_embeds)
    size = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    out = EcoDiffMasks(layers, [])
    current: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with frozen(unet), masked(unet, layers, lambda: current):
        for _ in tqdm(range(cfg.iterations), disable=not progress, desc="ecodiff", leave=False):
            labels = torch.randint(0, n_cls, (cfg.batch_size,), generator=gen)
            noise = torch.randn((cfg.batch_size, unet.config.in_channels, size, size), generator=gen)
            with torch.no_grad():
                current[:] = [torch.ones(layer.units) for layer in layers]
                target = trajectory(unet, noise, labels, sched)
            current[:] = [gate(lg, cfg.mask, sample=True, generator=gen) for lg in logits]
            mse, l0 = objective(unet, noise, labels, sched, target, logits, weights, cfg)
            loss = mse + cfg.beta * l0
            if not torch.isfinite(loss):
                raise FloatingPointError(f"EcoDiff's loss became {loss.item()}; lower lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.mse.append(mse.item())
            out.l0.append(l0.item())
    out.logits = [lg.detach().clone() for lg in logits]
    out.seconds = time.perf_counter() - t0
    return out


@dataclass
class EcoDiffReport:
    """What :func:`ecodiff_` did: parameters before/after, units kept per layer, the mask-learning curves
    (first and last x₀ MSE, L0), the units the learned gates had already closed, and the wall time."""

    sparsity: float
    params_before: int
    params_after: int
    units: dict[str, tuple[int, int]]
    closed_by_masks: int
    mse_first: float
    mse_last: float
    l0_last: float
    seconds: float

    @property
    def params_removed(self) -> float:
        return 1 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        return {**asdict(self), "params_removed": self.params_removed}

    def __str__(self) -> str:
        removed = sum(a - b for a, b in self.units.values())
        return (f"EcoDiff: removed {removed} of {sum(a for a, _ in self.units.values())} units, "
                f"{self.params_before:,} → {self.params_after:,} parameters ({100 * self.params_removed:.1f}% "
                f"removed, asked {100 * self.sparsity:.0f}%); {self.closed_by_masks} units closed by the learned "
                f"masks; x₀ MSE {self.mse_first:.4f} → {self.mse_last:.4f} in {self.seconds:.0f}s, no retraining")


def ecodiff_(unet, cfg: EcoDiffConfig | None = None, *, masks: EcoDiffMasks | None = None, progress: bool = False,
             **kwargs) -> EcoDiffReport:
    """Prune ``unet`` in place with EcoDiff: learn the masks (or use ``masks`` learned before on this UNet), then
    remove the lowest-ranked units until ``cfg.sparsity`` of the parameters is gone. Everything is checked
    before the UNet changes; its weights are never retrained."""
    cfg = _config(cfg, kwargs)
    layers = find_unit_layers(unet)
    _check(unet, cfg, layers)
    if masks is None:
        masks = learn_masks(unet, cfg, progress=progress)
    elif [(m.name, m.units) for m in masks.layers] != [(m.name, m.units) for m in layers]:
        raise ValueError("these masks were learned on a UNet of another layout; learn them on this one")
    total = sum(p.numel() for p in unet.parameters())
    keep = keep_lowest_removed(layers, masks.logits, cfg.sparsity * total, "params")
    closed = sum(int((gate(lg, cfg.mask, sample=False) == 0).sum()) for lg in masks.logits) \
        if cfg.mask == "hard_concrete" else sum(int((lg < 0).sum()) for lg in masks.logits)
    removal = remove_units_(unet, layers, keep)
    return EcoDiffReport(sparsity=cfg.sparsity, params_before=removal.params_before,
                         params_after=removal.params_after, units=removal.layers, closed_by_masks=closed,
                         mse_first=masks.mse[0] if masks.mse else float("nan"),
                         mse_last=masks.mse[-1] if masks.mse else float("nan"),
                         l0_last=masks.l0[-1] if masks.l0 else float("nan"), seconds=masks.seconds)
