"""Structural pruning of the DDPM's UNet, and Diff-Pruning (Fang et al., 2023, "Structural Pruning for
Diffusion Models").

Channels are removed through :func:`prunekit.structured.prune_` (the recorded dependency graph follows the
residual blocks, GroupNorm groups, skip concatenations, attention heads and the timestep/class embeddings), to
a target fraction of the MACs of one denoising step. The importances:

- ``diff-pruning``: first-order Taylor importance with the gradients of the denoising loss gathered over the
  *informative* timesteps only: timesteps are visited from t = 0 upwards (every ``timestep_stride``-th, on one
  fixed batch of images and noise) and the visit stops at the first t whose loss falls below ``threshold`` × the
  largest loss seen so far (the paper's ``L_t / L_max > thr`` rule, thr = 0.05); later, noisier timesteps carry
  little of the content and mostly noise in their gradients;
- ``taylor``: the same Taylor importance over all the visited timesteps (no threshold);
- ``l1`` / ``l2``: group magnitude (DepGraph); ``random``.

prunekit's Taylor score is Molchanov et al.'s (Σ g·w over a channel's weights)², g the loss gradient averaged
over the timestep batches; the paper's torch-pruning code sums |g·w| element-wise. Then a short fine-tune
(:func:`prunekit.diffusion.train_ddpm_`), whose cost is reported as a fraction of the training cost.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from ..core.config import Config
from ..core.fraction import Sparsity
from ..structured import prune_ as structured_prune_
from ..structured.graph.depgraph import UnsupportedOperation
from .ddpm import _check_batch, _alphas_cumprod, schedule_of
from .metrics import macs_per_step, step_inputs
from .model import count_params

IMPORTANCES = ("diff-pruning", "taylor", "l1", "l2", "random")
BLOCKS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


class DiffPruningConfig(Config):
    """Structural pruning of a diffusion UNet to ``macs_sparsity`` of its MACs per denoising step.
    ``blocks`` limits the pruning to some of the UNet's down/mid/up blocks (the rest keep their channels)."""

    macs_sparsity: Sparsity = 0.5
    importance: Literal[IMPORTANCES] = "diff-pruning"
    threshold: float = Field(0.05, gt=0, lt=1)
    timestep_stride: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    blocks: tuple[Literal["down", "mid", "up"], ...] | None = None
    seed: int = 0


@dataclass
class DiffPruneReport:
    """What :func:`diff_prune_` did: sizes before/after, the timesteps whose gradients were used and their losses,
    the structured-pruning report."""

    importance: str
    macs_sparsity: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    timesteps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    blocks: list[str] | None = None
    seconds: float = 0.0
    structured: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_removed(self) -> float:
        return 1 - self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs_removed": self.macs_removed}

    def __str__(self) -> str:
        ts = (f"; gradients over {len(self.timesteps)} timesteps t={self.timesteps[0]}..{self.timesteps[-1]}"
              if self.timesteps else "")
        where = f" in {'/'.join(self.blocks)} blocks" if self.blocks else ""
        return (f"{self.importance}{where}: MACs/step {self.macs_before:,} -> {self.macs_after:,} "
                f"(-{self.macs_removed:.1%}), params {self.params_before:,} -> {self.params_after:,}{ts}; "
                f"{self.seconds:.1f}s")


def _batch(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[:n]
    x0, y = images[idx], labels[idx]
    return x0, y, torch.randn(x0.shape, generator=gen)


def _noised(unet, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    a = _alphas_cumprod(schedule_of(unet))[t]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@torch.no_grad()
def informative_timesteps(unet, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, *, threshold: float | None,
                          stride: int = 10) -> tuple[list[int], list[float]]:
    """The timesteps 0, stride, 2·stride, … up to the first whose denoising loss (on this batch) falls below
    ``threshold`` × the largest loss so far (all of them when ``threshold`` is None), and their losses."""
    steps, losses = [], []
    worst = 0.0
    for t in range(0, schedule_of(unet).num_train_timesteps, stride):
        tt = torch.full((len(x0),), t)
        loss = float(torch.nn.functional.mse_loss(unet(_noised(unet, x0, noise, t), tt, class_labels=labels).sample,
                                                  noise))
        worst = max(worst, loss)
        if threshold is not None and loss < threshold * worst:
            break
        steps.append(t)
        losses.append(loss)
    return steps, losses


def _ignored(unet, blocks: tuple[str, ...] | None) -> list[str]:
    """Modules whose output channels are kept: every conv/linear outside the chosen blocks."""
    if not blocks:
        return []
    keep = tuple(BLOCKS[b] for b in blocks)
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            and not n.startswith(keep)]


MIN_SHARE = 0.8  # a result below this share of the asked MAC reduction is an error, not a quiet shortfall


def _snapshot(model: torch.nn.Module) -> list:
    return [(m, dict(m._parameters), dict(m._buffers), {k: v for k, v in vars(m).items() if not k.startswith("_")})
            for m in model.modules()]


def _restore(snap: list) -> None:
    """Put every module's tensors and attributes back (removal replaces tensors, never edits them in place)."""
    for m, params, bufs, attrs in snap:
        m._parameters.clear()
        m._parameters.update(params)
        m._buffers.clear()
        m._buffers.update(bufs)
        for k, v in attrs.items():
            setattr(m, k, v)


def _mse(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs.sample, targets)


def diff_prune_(unet, images: torch.Tensor, labels: torch.Tensor, cfg: DiffPruningConfig | None = None, *,
                verbose: bool = False) -> DiffPruneReport:
    """Remove channels of ``unet`` in place until ``cfg.macs_sparsity`` of its MACs per denoising step are gone,
    ranked by ``cfg.importance`` (gradients on a batch of ``images``/``labels``). A layout the dependency graph
    cannot follow is an error before anything changes. No fine-tune: call ``train_ddpm_`` after."""
    cfg = cfg or DiffPruningConfig()
    _check_batch(unet, images, labels)
    if len(images) == 0:
        raise ValueError("no images to score the channels on")
    t0 = time.perf_counter()
    x0, y, noise = _batch(images, labels, cfg.batch_size, cfg.seed)
    params_before, macs_before = count_params(unet), macs_per_step(unet)
    steps: list[int] = []
    losses: list[float] = []
    data = None
    if cfg.importance in ("diff-pruning", "taylor"):
        thr = cfg.threshold if cfg.importance == "diff-pruning" else None
        steps, losses = informative_timesteps(unet, x0, y, noise, threshold=thr, stride=cfg.timestep_stride)
        data = [({"sample": _noised(unet, x0, noise, t), "timestep": torch.full((len(x0),), t), "class_labels": y},
                 noise) for t in steps]
        importance: Any = {"importance": "taylor"}
    else:
        importance = {"importance": cfg.importance}
    example = {"sample": x0[:2], "timestep": torch.tensor([0, 500]), "class_labels": y[:2]}
    was_training = unet.training
    unet.eval()
    snap = _snapshot(unet)
    try:
        report = structured_prune_(unet, example, cfg.macs_sparsity, importance, target="macs",
                                   ignore=_ignored(unet, cfg.blocks), seed=cfg.seed, strict=True,
                                   loss_fn=_mse if data else None, data=data)
        if cfg.macs_sparsity > 0 and report.macs_removed < MIN_SHARE * cfg.macs_sparsity:
            why = "; ".join(f"{n:,} channels by {r}" for r, n in report.pinned[:2]) or "too few prunable channels"
            raise ValueError(f"the dependency graph could remove only {report.macs_removed:.1%} of the MACs where "
                             f"{cfg.macs_sparsity:.0%} was asked ({why}); this UNet layout (or blocks="
                             f"{cfg.blocks}) cannot be pruned that far; nothing was pruned")
    except UnsupportedOperation as exc:
        _restore(snap)
        raise ValueError(f"this UNet's layout cannot be followed by the dependency graph ({exc}); nothing was "
                         f"pruned") from None
    except BaseException:
        _restore(snap)
        raise
    finally:
        unet.zero_grad(set_to_none=True)
        unet.train(was_training)
    return DiffPruneReport(cfg.importance, cfg.macs_sparsity, params_before, count_params(unet), macs_before,
                           macs_per_step(unet), steps, losses, list(cfg.blocks) if cfg.blocks else None,
                           time.perf_counter() - t0, report.to_dict())
