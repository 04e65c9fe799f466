"""Single-image super-resolution on Fashion-MNIST: a small EDSR-style network trained sparse from scratch, to test
"Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution" (ISS-P; Wang et al., ICCV 2023).

- data: :func:`sr_pairs`: each 28×28 image (high resolution) box-downscaled by ``scale`` (the low-resolution
  input); :func:`bicubic` upscales the input back, the baseline every network must beat;
- model: :class:`TinySR`: a 3×3 head convolution, ``blocks`` residual blocks (conv-ReLU-conv + skip, EDSR's body,
  no BatchNorm), a 3×3 tail to ``scale²`` channels and a pixel shuffle, added to the bicubic upscale (the network
  learns the residual);
- training: :func:`train_sr_` trains it with Adam on the L1 loss, cosine learning rate, and calls ``after_step``
  after every optimizer step: where a pruner (:class:`prunekit.train.SoftShrink` for ISS-P and IHT,
  :class:`prunekit.train.Gradual` for gradual magnitude pruning) steps;
- :func:`sr_psnr`: PSNR of the network's output (clamped to [0, 1]) against the high-resolution images.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..metrics.image import psnr
from .batches import minibatches, steps_of


def sr_pairs(images: Tensor, scale: int = 2) -> tuple[Tensor, Tensor]:
    """(low resolution, high resolution) from (N, C, H, W) images in [0, 1]: the mean of each ``scale``×``scale``
    block (box downscaling), and the images themselves, cropped to a multiple of ``scale``."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer of at least 2, got {scale!r}")
    h, w = images.shape[-2] // scale * scale, images.shape[-1] // scale * scale
    if h == 0 or w == 0:
        raise ValueError(f"images of {tuple(images.shape[-2:])} pixels are smaller than scale={scale}")
    hr = images[..., :h, :w].float()
    return F.avg_pool2d(hr, scale), hr


def bicubic(lr: Tensor, scale: int) -> Tensor:
    """The bicubic upscale of ``lr`` by ``scale`` (align_corners=False, as image libraries do), in [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class ResBlock(nn.Module):
    """EDSR's residual block: conv-ReLU-conv, added to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class TinySR(nn.Module):
    """A small EDSR-style super-resolution network: head, ``blocks`` residual blocks, tail and pixel shuffle,
    learning the residual over the bicubic upscale of its input."""

    def __init__(self, channels: int = 32, blocks: int = 4, scale: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (channels, blocks, scale, in_channels))
        if not ints or channels < 1 or blocks < 0 or scale < 2 or in_channels < 1:
            raise ValueError(f"TinySR needs integers channels >= 1, blocks >= 0, scale >= 2 and in_channels >= 1; got "
                             f"{channels}, {blocks}, {scale}, {in_channels}")
        self.scale = scale
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))
        self.tail = nn.Conv2d(channels, in_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, lr: Tensor) -> Tensor:
        f = self.head(lr)
        return F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False) + \
            self.shuffle(self.tail(f + self.body(f)))


def train_sr_(model: TinySR, lr_images: Tensor, hr_images: Tensor, *, epochs: float = 1.0, lr: float = 1e-3,
              batch_size: int = 32, seed: int = 0, after_step: Callable[[], None] | None = None) -> list[float]:
    """Train ``model`` in place: Adam at ``lr`` with a cosine decay, L1 loss against ``hr_images``, over
    ``epochs`` of seeded minibatches; ``after_step()`` runs after every optimizer step (a pruner's ``step``).
    Returns every step's loss."""
    if len(lr_images) != len(hr_images):
        raise ValueError(f"lr_images and hr_images must have one length, got {len(lr_images)} and {len(hr_images)}")
    want = tuple(s * model.scale for s in lr_images.shape[-2:])
    if tuple(hr_images.shape[-2:]) != want:
        raise ValueError(f"hr_images must be the lr_images × scale {model.scale} = {want} pixels, got "
                         f"{tuple(hr_images.shape[-2:])}; make the pairs with sr_pairs(images, scale)")
    steps = steps_of(len(lr_images), batch_size, epochs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses: list[float] = []
    model.train()
    for idx in minibatches(len(lr_images), batch_size, epochs, seed):
        loss = F.l1_loss(model(lr_images[idx]), hr_images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sr_psnr(model: nn.Module, lr_images: Tensor, hr_images: Tensor, batch_size: int = 256) -> float:
    """PSNR (dB) of ``model``'s upscales of ``lr_images`` against ``hr_images``, over the whole set."""
    was = model.training
    model.eval()
    out = torch.cat([model(lr_images[i:i + batch_size]) for i in range(0, len(lr_images), batch_size)])
    model.train(was)
    return psnr(out, hr_images)
