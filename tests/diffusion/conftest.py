"""A tiny class-conditional DDPM trained in seconds, shared by the diffusion tests (session fixture)."""

from __future__ import annotations

import pytest
import torch

from prunekit.datasets import fashion_mnist_available
from prunekit.diffusion import TrainConfig, UNetConfig, build_unet, fashion_mnist, train_ddpm_

TINY = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention=True, attention_head_dim=4,
                  norm_num_groups=4)

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")


@pytest.fixture(scope="session")
def fmnist_small():
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    return fashion_mnist("train", limit=512)


@pytest.fixture(scope="session")
def tiny_ddpm(fmnist_small):
    """A 45k-parameter UNet trained for 30 steps: enough to have a schedule and non-random weights."""
    torch.manual_seed(0)
    x, y = fmnist_small
    unet = build_unet(TINY, seed=0)
    report = train_ddpm_(unet, x, y, TrainConfig(steps=30, batch_size=32, lr=2e-3, warmup_steps=5), progress=False)
    return unet, report
