"""DDPM training (ε-prediction), DDIM sampling and the checkpoint folder of prunekit's diffusion UNet.

The noise schedule a UNet was trained with travels with it (``unet.prunekit_schedule``, saved in its
folder's ``prunekit.json``), so sampling and the denoising loss use the schedule the model knows, and a step
count above its trained timesteps is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ..core.config import Config
from ..infra.atomic import output_folder
from ..infra.meta import read_meta, write_meta

KIND = "prunekit-diffusion-unet"
WEIGHTS = "model.safetensors"


class NoiseSchedule(Config):
    """The forward-noise schedule (diffusers' names)."""

    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)


class TrainConfig(NoiseSchedule):
    """DDPM training: ``steps`` AdamW steps of ``batch_size`` images, ε-prediction MSE, an optional EMA of
    the weights (``ema_decay``, warmed up: :func:`ema_decay_at`; the EMA weights are what the model holds at the end). ``max_seconds`` stops
    early at a wall-clock budget (the report says how many steps ran)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    max_seconds: float | None = Field(None, gt=0)
    seed: int = 0

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(**{k: getattr(self, k) for k in NoiseSchedule.model_fields})


@dataclass
class TrainReport:
    """What ``train_ddpm_`` did: steps, wall seconds, the loss curve (mean per ``log_every`` steps)."""

    steps: int
    seconds: float
    images_seen: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    log_every: int = 50
    ema_decay: float | None = None
    schedule: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ema = f", EMA {self.ema_decay}" if self.ema_decay else ""
        return (f"trained {self.steps} steps ({self.images_seen} images) in {self.seconds:.1f}s; "
                f"final loss {self.final_loss:.4f}{ema}")


# ------------------------------------------------------------------------------------------ schedule


def schedule_of(unet) -> NoiseSchedule:
    """The noise schedule ``unet`` was trained with (the default schedule for a model never trained here)."""
    s = getattr(unet, "prunekit_schedule", None)
    return NoiseSchedule(**s) if s else NoiseSchedule()


def _set_schedule(unet, schedule: NoiseSchedule) -> None:
    unet.prunekit_schedule = schedule.model_dump()


def _ddpm_scheduler(schedule: NoiseSchedule):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=schedule.num_train_timesteps, beta_schedule=schedule.beta_schedule,
                         beta_start=schedule.beta_start, beta_end=schedule.beta_end)


def _alphas_cumprod(schedule: NoiseSchedule) -> torch.Tensor:
    return _ddpm_scheduler(schedule).alphas_cumprod.to(torch.float32)


# ------------------------------------------------------------------------------------------ training


def _check_batch(unet, images: torch.Tensor, labels: torch.Tensor) -> None:
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    want = (cfg.in_channels, size, size)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images must be [N, {want[0]}, {want[1]}, {want[2]}] for this UNet, got "
                         f"{list(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be one int per image ([{images.shape[0]}]), got {list(labels.shape)}")
    n_cls = cfg.num_class_embeds
    if n_cls is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise ValueError(f"labels must be in [0, {n_cls}) for this UNet, got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if not torch.isfinite(images).all():
        raise ValueError("images hold NaN or inf; expected values in [-1, 1]")


def denoising_loss(unet, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                   schedule: NoiseSchedule | None = None, reduction: str = "mean") -> torch.Tensor:
    """The ε-prediction MSE of ``unet`` on ``x0`` noised to timesteps ``t`` with ``noise`` (the schedule the
    UNet knows unless ``schedule`` is given). ``reduction="none"`` gives one loss per image."""
    schedule = schedule or schedule_of(unet)
    ac = _alphas_cumprod(schedule).to(x0.device)[t.long()].view(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    pred = unet(xt, t, class_labels=labels).sample
    per = (pred.float() - noise.float()).pow(2).flatten(1).mean(1)
    return per if reduction == "none" else per.mean()


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay used after step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``, so the average
    forgets the initial weights within a few dozen steps (with a fixed 0.995, 19% of the weights after 331
    steps were still those of the random initialisation)."""
    return min(decay, (1 + step) / (10 + step))


def train_ddpm_(unet, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig | None = None, *,
                progress: bool = True) -> TrainReport:
    """Train ``unet`` in place as a DDPM (ε-prediction MSE, AdamW, linear warm-up, optional EMA) on
    ``images`` ([N, C, S, S] in [-1, 1]) and their class ``labels``. Returns the report; the model keeps the
    schedule it was trained with."""
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    _check_batch(unet, images, labels)
    if images.shape[0] == 0:
        raise ValueError("no images to train on")
    schedule = cfg.schedule()
    gen = torch.Generator().manual_seed(cfg.seed)
    ac = _alphas_cumprod(schedule)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay else None
    _set_schedule(unet, schedule)
    unet.train()
    losses, window = [], []
    log_every = max(1, min(50, cfg.steps // 20 or 1))
    t0 = time.perf_counter()
    n = images.shape[0]
    done = 0
    for step in tqdm(range(cfg.steps), disable=not progress, desc="ddpm", leave=False):
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            break
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, noise)
        if not torch.isfinite(loss):
            unet.eval()
            raise FloatingPointError(f"the DDPM loss became {loss.item()} at step {step}; lower lr "
                                     f"(now {cfg.lr}) or keep grad_clip on")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():  # warmed-up decay: a short run's EMA must not keep a share of the initial weights
                decay = ema_decay_at(cfg.ema_decay, step)
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        window.append(loss.item())
        done += 1
        if len(window) == log_every:
            losses.append(sum(window) / len(window))
            window = []
    if window:
        losses.append(sum(window) / len(window))
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    unet.eval()
    return TrainReport(steps=done, seconds=time.perf_counter() - t0, images_seen=done * min(cfg.batch_size, n),
                       final_loss=losses[-1], losses=losses, log_every=log_every, ema_decay=cfg.ema_decay,
                       schedule=schedule.model_dump())


# ------------------------------------------------------------------------------------------ sampling


def check_steps(unet, steps: Any) -> None:
    """Raise (one line) unless ``steps`` is a sampler step count this UNet was trained for: a positive int no
    larger than the timesteps of the schedule it was trained with."""
    schedule = schedule_of(unet)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if steps > schedule.num_train_timesteps:
        raise ValueError(f"steps={steps} is more than the {schedule.num_train_timesteps} timesteps this model was "
                         f"trained with; use steps <= {schedule.num_train_timesteps}")


def check_labels(unet, labels: torch.Tensor) -> None:
    """Raise (one line) unless ``labels`` are class ids this UNet has an embedding for."""
    n_cls = unet.config.num_class_embeds
    if labels.dim() != 1:
        raise ValueError(f"labels must be one class id per image ([N]), got shape {list(labels.shape)}")
    if n_cls is None:
        raise ValueError("this UNet has no class embedding (num_class_embeds is None); prunekit's DDPM is "
                         "class-conditional: build it with UNetConfig(num_classes=...)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise ValueError(f"labels must be in [0, {n_cls}) for this UNet, got [{int(labels.min())}, "
                         f"{int(labels.max())}]")


@torch.no_grad()
def ddim_sample(unet, labels: torch.Tensor | list[int], *, steps: int = 50, seed: int = 0, eta: float = 0.0,
                batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Sample one image per label with DDIM (diffusers' ``DDIMScheduler`` over the UNet's own schedule,
    ``steps`` denoising steps). Returns float32 ``[N, C, S, S]`` clipped to [-1, 1]. The initial noise of image
    i depends only on ``seed`` and i, so the result does not depend on ``batch_size`` (with ``eta=0``)."""
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    schedule = schedule_of(unet)
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_steps(unet, steps)
    check_labels(unet, labels)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    sched = DDIMScheduler(num_train_timesteps=schedule.num_train_timesteps, beta_schedule=schedule.beta_schedule,
                          beta_start=schedule.beta_start, beta_end=schedule.beta_end, clip_sample=True,
                          set_alpha_to_one=False)
    sched.set_timesteps(steps)
    n = labels.shape[0]
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.randn((n, cfg.in_channels, size, size), generator=gen)
    was_training = unet.training
    unet.eval()
    out = []
    try:
        for start in tqdm(range(0, n, batch_size), disable=not progress, desc="ddim", leave=False):
            x = x_all[start:start + batch_size]
            y = labels[start:start + batch_size]
            step_gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
            for t in sched.timesteps:
                eps = unet(x, t.expand(x.shape[0]), class_labels=y).sample
                x = sched.step(eps, t, x, eta=eta, generator=step_gen).prev_sample
            out.append(x.clamp(-1, 1))
    finally:
        unet.train(was_training)
    return torch.cat(out) if out else x_all


# ------------------------------------------------------------------------------------------ checkpoints


def _scalar_attrs(module) -> dict[str, Any]:
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, tuple) and all(isinstance(e, (int, float)) for e in v):
            out[k] = list(v)
    return out


def _layout(unet, skeleton) -> dict[str, dict[str, Any]]:
    """Per module, the simple attributes (channel counts, groups, heads) that differ from a fresh build."""
    fresh = dict(skeleton.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, m in unet.named_modules():
        base = fresh.get(name)
        if base is None or type(base) is not type(m):
            raise ValueError(f"cannot save this UNet: module {name or '<root>'!r} ({type(m).__name__}) is not "
                             f"where its diffusers config puts it; only channel-pruned UNet2DModels are saved")
        a, b = _scalar_attrs(m), _scalar_attrs(base)
        d = {k: v for k, v in a.items() if b.get(k, object()) != v}
        if d:
            diff[name] = d
    return diff


def _skeleton(config: dict):
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel.from_config(config)


def save_unet(unet, path: str | os.PathLike, *, overwrite: bool = False, meta: dict[str, Any] | None = None) -> Path:
    """Save ``unet`` (pruned or not) as a folder: ``model.safetensors`` + ``prunekit.json`` (diffusers config,
    the per-module layout that differs from it, the noise schedule, the weights' sha256, ``meta``). The folder
    is written atomically and read back before it replaces ``path``. Returns the folder."""
    from safetensors.torch import save_file

    config = dict(unet.config)
    layout = _layout(unet, _skeleton(config))
    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    with output_folder(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        sha = sha256_file(tmp / WEIGHTS)
        write_meta(tmp, {"kind": KIND, "unet_config": config, "layout": layout,
                         "schedule": schedule_of(unet).model_dump(), "weights_sha256": sha,
                         "params": sum(v.numel() for k, v in state.items()), **(meta or {})})
        back = load_unet(tmp)
        for k, v in back.state_dict().items():
            if not torch.equal(v, state[k]):
                raise OSError(f"read-back of {path} differs at {k}; nothing was written")
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_shape(m: torch.nn.Module, leaf: str) -> tuple[int, ...] | None:
    """The shape a layer's own size attributes give its parameter ``leaf`` (None for a module not checked)."""
    nn = torch.nn
    if isinstance(m, nn.Linear):
        return (m.out_features, m.in_features) if leaf == "weight" else (m.out_features,)
    if isinstance(m, nn.Conv2d):
        return (m.out_channels, m.in_channels // m.groups, *m.kernel_size) if leaf == "weight" else (m.out_channels,)
    if isinstance(m, nn.GroupNorm):
        return (m.num_channels,)
    if isinstance(m, nn.LayerNorm):
        return tuple(m.normalized_shape)
    if isinstance(m, nn.Embedding):
        return (m.num_embeddings, m.embedding_dim)
    return None


def _reshape_to_(unet, layout: dict[str, dict[str, Any]], state: dict[str, torch.Tensor]) -> None:
    modules = dict(unet.named_modules())
    for name, attrs in layout.items():
        m = modules.get(name)
        if m is None:
            raise ValueError(f"its layout names a module {name!r} that this diffusers UNet2DModel does not have")
        for k, v in attrs.items():
            setattr(m, k, tuple(v) if isinstance(v, list) else v)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        m = modules.get(owner)
        if m is None or not (leaf in m._parameters or leaf in m._buffers):
            raise ValueError(f"its weights hold {key!r}, which this UNet layout does not have")
        want = _expected_shape(m, leaf) if leaf in m._parameters else None
        if want is not None and tuple(tensor.shape) != want:
            raise ValueError(f"its weights give {key} the shape {list(tensor.shape)} where the recorded layout has "
                             f"{list(want)} (a checkpoint of another shape)")
        if leaf in m._parameters:
            m._parameters[leaf] = torch.nn.Parameter(torch.empty_like(tensor, device="cpu"),
                                                     requires_grad=m._parameters[leaf].requires_grad)
        else:
            m._buffers[leaf] = torch.empty_like(tensor, device="cpu")


def load_unet(path: str | os.PathLike):
    """Read a folder written by :func:`save_unet` back into a ``UNet2DModel`` (pruned shapes included), in
    eval mode, with its noise schedule. A folder that is not one, or weights that do not fit the recorded
    layout, is an error naming the folder."""
    from safetensors.torch import load_file

    folder = Path(path)
    meta = read_meta(folder) if folder.is_dir() else None
    if not meta or meta.get("kind") != KIND:
        raise ValueError(f"{folder} is not a prunekit diffusion UNet folder (no prunekit.json of kind {KIND!r}); "
                         f"write one with prunekit.diffusion.save_unet or `prunekit diffusion train`")
    if not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} has no {WEIGHTS}; the checkpoint is incomplete")
    sha = meta.get("weights_sha256")
    if sha and sha256_file(folder / WEIGHTS) != sha:
        raise ValueError(f"{folder / WEIGHTS} does not match the sha256 recorded in its prunekit.json; "
                         f"the file was changed or damaged")
    from diffusers import UNet2DModel

    state = load_file(str(folder / WEIGHTS))
    unet = UNet2DModel.from_config(meta["unet_config"])
    try:
        _reshape_to_(unet, meta.get("layout", {}), state)
        missing = sorted(set(unet.state_dict()) - set(state))
        if missing:
            raise ValueError(f"its weights lack {missing[:3]}{'…' if len(missing) > 3 else ''}")
        unet.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{folder}: the checkpoint does not fit its recorded UNet layout: "
                         f"{str(exc).splitlines()[0]}") from None
    _set_schedule(unet, NoiseSchedule(**meta.get("schedule", {})))
    unet.eval()
    return unet


def read_unet_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``prunekit.json`` of a saved UNet folder (empty dict when none)."""
    return read_meta(path) or {}
