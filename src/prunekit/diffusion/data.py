"""Fashion-MNIST for the DDPM: images in [-1, 1], padded with the background value to ``pad_to`` pixels."""

from __future__ import annotations

import torch

from ..datasets.fashion_mnist import load_fashion_mnist


def fashion_mnist(split: str = "train", pad_to: int = 32, *, limit: int | None = None,
                  root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: float32 ``[N, 1, pad_to, pad_to]`` in [-1, 1] (black background = -1) and int64
    ``[N]``. ``limit`` keeps the first N examples."""
    if pad_to < 28:
        raise ValueError(f"pad_to must be >= 28 (Fashion-MNIST images are 28x28), got {pad_to}")
    if (pad_to - 28) % 2:
        raise ValueError(f"pad_to must be 28 plus an even number of pixels, got {pad_to}")
    ds = load_fashion_mnist(split, root=root, limit=limit, normalize=False)
    x, y = ds.tensors
    x = x.mul(2).sub_(1)
    pad = (pad_to - 28) // 2
    if pad:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    return x.contiguous(), y
