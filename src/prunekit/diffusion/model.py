"""The UNet of prunekit's own DDPM: a diffusers ``UNet2DModel``, class-conditional through ``num_class_embeds``.

``build_unet(UNetConfig())`` gives the layout the benchmarks train: one grey channel, 32×32 pixels, one
resolution level per entry of ``block_out_channels``, self-attention at the lowest resolution (and in the
middle block) when ``attention`` is on.
"""

from __future__ import annotations

from pydantic import field_validator, model_validator

from ..core.config import Config


class UNetConfig(Config):
    """The shape of the UNet. ``block_out_channels`` has one entry per resolution level; attention (when on)
    sits in the lowest-resolution down/up blocks and in the middle block, with heads of ``attention_head_dim``
    channels."""

    sample_size: int = 32
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention: bool = True
    attention_head_dim: int = 8
    num_classes: int = 10
    norm_num_groups: int = 8

    @field_validator("block_out_channels")
    @classmethod
    def _channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(c < 1 for c in v):
            raise ValueError(f"block_out_channels must be one or more positive ints, got {v}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "UNetConfig":
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"every entry of block_out_channels must be a multiple of norm_num_groups="
                             f"{self.norm_num_groups}; {bad} are not")
        if self.attention and any(c % self.attention_head_dim for c in self.block_out_channels):
            raise ValueError(f"with attention, block_out_channels must be multiples of attention_head_dim="
                             f"{self.attention_head_dim}, got {self.block_out_channels}")
        if self.sample_size % (2 ** (len(self.block_out_channels) - 1)):
            raise ValueError(f"sample_size={self.sample_size} must be divisible by 2**(levels-1)="
                             f"{2 ** (len(self.block_out_channels) - 1)}")
        for name in ("layers_per_block", "num_classes", "sample_size", "in_channels", "attention_head_dim",
                     "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


def diffusers_config(cfg: UNetConfig) -> dict:
    """The ``UNet2DModel`` keyword arguments of ``cfg``."""
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return dict(sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
                block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                down_block_types=tuple(down), up_block_types=tuple(up), add_attention=cfg.attention,
                attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
                num_class_embeds=cfg.num_classes)


def build_unet(cfg: UNetConfig | None = None, *, seed: int | None = None):
    """A fresh ``diffusers.UNet2DModel`` of shape ``cfg`` (``seed`` fixes its initial weights)."""
    import torch
    from diffusers import UNet2DModel

    cfg = cfg or UNetConfig()
    if seed is None:
        return UNet2DModel(**diffusers_config(cfg))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**diffusers_config(cfg))


def count_params(module) -> int:
    """The number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
