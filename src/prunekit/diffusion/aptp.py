"""APTP (Ganjdanesh et al., "Not All Prompts Are Made Equal: Prompt-based Pruning of Text-to-Image Diffusion
Models"): a router maps each prompt to one of ``num_codes`` architecture codes, each code a sub-network (which
units of the UNet it keeps), trained so that the *average* MACs over prompts meet a budget.

Here a prompt is a class label and its embedding is the UNet's own class-embedding row (the model's "text
encoder"). The objectives, as in the paper and its code:

- **denoising**: the ε-prediction MSE of the UNet under each sample's code, plus distillation to the unpruned
  UNet's ε (the weights stay frozen while the router and codes learn);
- **resource**: ``|log(r / p)|`` where ``r`` is the batch's mean MAC fraction under its codes and ``p`` the
  budget (``macs``);
- **contrastive**: the router's architecture vectors must be as similar to each other as their prompts are
  (binary cross-entropy between the two row-softmaxed similarity matrices), so similar prompts share codes;
- **optimal transport**: during training each sample goes to a code by Sinkhorn-Knopp over the batch with
  equal mass per code, so the codes cannot collapse into one; at inference, to the most similar code;
- a commitment term pulls the router's vector toward its code (the codes learn from the denoising and
  resource losses through straight-through binary gates; the router from the contrastive and commitment
  terms).

Finally each code's gates are binarised, with per-code budgets rescaled so the class-average MAC fraction is
exactly ``macs`` (up to one unit), and each code becomes a physically pruned copy of the UNet. A static pruned
model at the same budget is the same procedure with ``num_codes=1``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import Config
from ..core.fraction import Keep
from ..metrics.macs import count_macs
from .ddpm import _alphas_cumprod, schedule_of
from .ecodiff import ddim_from
from .units import UnitLayer, find_unit_layers, frozen, keep_lowest_removed, masked, remove_units_, unit_costs


class APTPConfig(Config):
    """APTP's settings: ``num_codes`` architecture codes; ``macs`` the fraction of the UNet's MACs per denoising
    step kept on average over prompts; ``iterations`` Adam steps of ``batch_size`` training images."""

    method: Literal["aptp"] = "aptp"
    num_codes: int = Field(4, ge=1)
    macs: Keep = 0.6
    iterations: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.05, gt=0)
    router_lr: float = Field(1e-3, gt=0)
    hidden: int = Field(64, ge=1)
    temperature: float = Field(0.4, gt=0)
    sinkhorn_epsilon: float = Field(0.05, gt=0)
    sinkhorn_iterations: int = Field(3, ge=1)
    resource_weight: float = Field(2.0, ge=0)
    contrastive_weight: float = Field(1.0, ge=0)
    distill_weight: float = Field(1.0, ge=0)
    commit_weight: float = Field(0.25, ge=0)
    seed: int = 0


class Router(nn.Module):
    """Prompt embedding → one logit per unit (the architecture vector before gating)."""

    def __init__(self, dim: int, hidden: int, units: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, units))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """A transport plan ``[B, K]`` from similarity ``scores``: rows sum to 1 (each sample is assigned), columns
    to B/K (each code gets an equal share of the batch) after ``iterations`` Sinkhorn-Knopp rounds."""
    q = torch.exp((scores - scores.max()) / epsilon).t()  # K × B
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def contrastive_loss(prompts: torch.Tensor, arch: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """APTP's contrastive term: BCE between the row-softmaxed cosine similarities of the architecture vectors
    and those of the prompt embeddings."""
    a = F.normalize(arch, dim=1)
    p = F.normalize(prompts, dim=1)
    sa = F.softmax(a @ a.t() / temperature, dim=-1)
    sp = F.softmax(p @ p.t() / temperature, dim=-1)
    return F.binary_cross_entropy(sa, sp)


@dataclass
class APTPResult:
    """The trained router and codes: the class → code assignment, each code's keep masks (one boolean
    ``[units]`` per unit layer) and MAC fraction, the class-average MAC fraction, the loss curves."""

    layers: list[UnitLayer]
    router: Router
    codes: torch.Tensor
    class_codes: list[int]
    keep: list[list[torch.Tensor]]
    code_macs: list[float]
    average_macs: float
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"class_codes": self.class_codes, "code_macs": self.code_macs, "average_macs": self.average_macs,
                "kept_units": [[int(k.sum()) for k in code] for code in self.keep], "seconds": self.seconds,
                "final_losses": {k: v[-1] for k, v in self.losses.items() if v}}

    def __str__(self) -> str:
        used = sorted(set(self.class_codes))
        fr = ", ".join(f"code {c}: {100 * self.code_macs[c]:.0f}% MACs, classes "
                       f"{[i for i, k in enumerate(self.class_codes) if k == c]}" for c in used)
        return f"APTP: {len(used)} of {len(self.code_macs)} codes used ({fr}); class-average {100 * self.average_macs:.1f}% MACs"


def _split(flat: torch.Tensor, layers: list[UnitLayer]) -> list[torch.Tensor]:
    return list(torch.split(flat, [layer.units for layer in layers], dim=-1))


def _assign(router_probs: torch.Tensor, code_probs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of resource-weighted gate vectors ``[B, K]``."""
    return F.normalize(router_probs * scale, dim=1) @ F.normalize(code_probs * scale, dim=1).t()


def _check(unet, images: torch.Tensor, labels: torch.Tensor, cfg: APTPConfig, layers, total: int) -> None:
    if getattr(unet.config, "num_class_embeds", None) is None or not isinstance(unet.class_embedding, nn.Embedding):
        raise ValueError("APTP here needs a class-conditional UNet2DModel (num_class_embeds set): the classes are "
                         "its prompts")
    n_cls = unet.config.num_class_embeds
    if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels) or len(images) < cfg.batch_size:
        raise ValueError(f"images [N, C, H, W] and labels [N] with N >= batch_size={cfg.batch_size} expected, got "
                         f"{list(images.shape)} and {list(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= n_cls:
        raise ValueError(f"labels must be in [0, {n_cls}) for this UNet")
    removable = sum(layer.macs * (layer.units - 1) for layer in layers)
    if (1 - cfg.macs) * total > removable:
        raise ValueError(f"macs={cfg.macs} asks to remove {(1 - cfg.macs) * total:,.0f} MACs per step but the prunable "
                         f"units hold {removable:,}; ask for macs >= {1 - removable / total:.3f}")


def _binarise(layers, logits: torch.Tensor, keep_fraction: float, total: int, prunable: int) -> list[torch.Tensor]:
    """Keep masks of one code with MAC fraction ``keep_fraction`` of the whole UNet (lowest logits removed)."""
    amount = max(0.0, (1 - keep_fraction) * total)
    amount = min(amount, float(prunable))
    return keep_lowest_removed(layers, _split(logits, layers), amount, "macs")


def _macs_fraction(layers, keep: list[torch.Tensor], total: int) -> float:
    removed = sum(layer.macs * int((~k).sum()) for layer, k in zip(layers, keep))
    return 1 - removed / total


def train_aptp(unet, images: torch.Tensor, labels: torch.Tensor, cfg: APTPConfig | None = None, *,
               progress: bool = False, **kwargs) -> APTPResult:
    """Train APTP's router and architecture codes on ``unet`` (frozen; left as it was) with ``images`` in
    [-1, 1] and their class ``labels``; binarise the codes at the class-average MAC budget ``cfg.macs``."""
    from tqdm.auto import tqdm

    if cfg is not None and kwargs:
        raise TypeError("pass an APTPConfig or keywords, not both")
    cfg = cfg if cfg is not None else APTPConfig.parse(kwargs)
    layers = find_unit_layers(unet)
    unit_costs(unet, layers, images[:1], labels[:1])
    total = count_macs(unet, {"sample": images[:1], "timestep": torch.zeros(1, dtype=torch.long),
                              "class_labels": labels[:1]})
    _check(unet, images, labels, cfg, layers, total)
    n_cls = int(unet.config.num_class_embeds)
    unit_macs = torch.cat([torch.full((layer.units,), float(layer.macs)) for layer in layers])
    prunable = float(unit_macs.sum())
    fixed = total - prunable
    scale = (unit_macs / unit_macs.sum()).sqrt()
    prompts = unet.class_embedding.weight.detach().clone()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        router = Router(prompts.shape[1], cfg.hidden, len(unit_macs))
        codes = nn.Parameter(2.0 + torch.randn(cfg.num_codes, len(unit_macs)))
    opt = torch.optim.Adam([{"params": router.parameters(), "lr": cfg.router_lr}, {"params": [codes], "lr": cfg.lr}])
    ac = _alphas_cumprod(schedule_of(unet))
    T = len(ac)
    losses: dict[str, list[float]] = {k: [] for k in ("denoise", "distill", "resource", "contrastive", "commit", "macs")}
    current: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with frozen(unet), masked(unet, layers, lambda: current):
        for _ in tqdm(range(cfg.iterations), disable=not progress, desc="aptp", leave=False):
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
            x0, y = images[idx], labels[idx]
            t = torch.randint(0, T, (cfg.batch_size,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            a = ac[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            r = router(prompts[y])
            rp = torch.sigmoid(r)
            cp = torch.sigmoid(codes)
            with torch.no_grad():
                plan = sinkhorn(_assign(rp, cp, scale), cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
                code = plan.argmax(dim=1)
            u = torch.rand((cfg.batch_size, len(unit_macs)), generator=gen).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((codes[code] + u.log() - (1 - u).log()) / cfg.temperature)
            gates = (soft > 0.5).float() + soft - soft.detach()  # straight-through binary gates
            with torch.no_grad():
                current[:] = [torch.ones(layer.units) for layer in layers]
                teacher = unet(xt, t, class_labels=y).sample
            current[:] = _split(gates, layers)
            eps = unet(xt, t, class_labels=y).sample
            denoise = F.mse_loss(eps, noise)
            distill = F.mse_loss(eps, teacher)
            ratio = ((fixed + gates @ unit_macs) / total).mean()
            resource = torch.log(ratio / cfg.macs).abs()
            contrast = contrastive_loss(prompts[y], rp)
            commit = F.mse_loss(rp, cp[code].detach())
            loss = (denoise + cfg.distill_weight * distill + cfg.resource_weight * resource
                    + cfg.contrastive_weight * contrast + cfg.commit_weight * commit)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"APTP's loss became {loss.item()}; lower lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in (("denoise", denoise), ("distill", distill), ("resource", resource),
                         ("contrastive", contrast), ("commit", commit), ("macs", ratio)):
                losses[k].append(v.item())
    with torch.no_grad():
        rp = torch.sigmoid(router(prompts))
        class_codes = _assign(rp, torch.sigmoid(codes), scale).argmax(dim=1).tolist()
        logits = codes.detach()
        # each code's own MAC fraction at gate 0.5, then rescaled so the class average is exactly cfg.macs
        raw = [_macs_fraction(layers, [lg > 0 for lg in _split(logits[k], layers)], total)
               for k in range(cfg.num_codes)]
        mean = sum(raw[c] for c in class_codes) / n_cls
        target = [min(1.0, raw[k] * cfg.macs / mean) if mean > 0 else cfg.macs for k in range(cfg.num_codes)]
        keep = [_binarise(layers, logits[k], target[k], total, prunable) for k in range(cfg.num_codes)]
        code_macs = [_macs_fraction(layers, kp, total) for kp in keep]
    average = sum(code_macs[c] for c in class_codes) / n_cls
    return APTPResult(layers=layers, router=router, codes=logits, class_codes=class_codes, keep=keep,
                      code_macs=code_macs, average_macs=average, losses=losses, seconds=time.perf_counter() - t0)


def code_models(unet, result: APTPResult) -> dict[int, nn.Module]:
    """One physically pruned copy of ``unet`` per code that some class is routed to (``unet`` is unchanged)."""
    out = {}
    for c in sorted(set(result.class_codes)):
        m = copy.deepcopy(unet)
        remove_units_(m, copy.deepcopy(result.layers), result.keep[c])
        out[c] = m
    return out


def routed_sample(models: dict[int, nn.Module], class_codes: list[int], labels: torch.Tensor, *, steps: int = 50,
                  seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """DDIM samples (eta 0) for ``labels``, each drawn by the pruned UNet of its class's code (batched per code).
    Image i starts from the noise ``ddpm.ddim_sample`` gives image i for this ``seed``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if not models:
        raise ValueError("no code models given")
    route = torch.tensor([class_codes[int(c)] for c in labels])
    missing = sorted(set(route.tolist()) - set(models))
    if missing:
        raise ValueError(f"labels route to codes {missing} that have no model")
    cfg = next(iter(models.values())).config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    noise = torch.randn((len(labels), cfg.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    out = torch.empty_like(noise)
    for c, m in models.items():
        idx = (route == c).nonzero().flatten()
        if len(idx):
            out[idx] = ddim_from(m, noise[idx], labels[idx], steps=steps, batch_size=batch_size)
    return out
