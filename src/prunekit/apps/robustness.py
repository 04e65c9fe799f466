"""Pruned models under common corruptions, after "Understanding Robustness Lottery: A Geometric Visual
Comparative Analysis of Neural Network Pruning Approaches" (Li et al., 2022): the same test set with
Gaussian noise, Gaussian blur and lowered contrast at stated severities (ImageNet-C's recipes, Hendrycks
& Dietterich 2019, scaled to 28×28 grey images), and each model's accuracy on every one beside clean.

Images are corrupted in pixel space [0, 1] and normalised back with the data set's mean and std.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..datasets.fashion_mnist import MEAN, STD
from ..metrics.accuracy import accuracy

# severity 1..5 → parameter (noise σ in pixel units; blur σ in pixels at 28×28; contrast factor c)
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
}
CORRUPTIONS = tuple(SEVERITIES)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian kernel of radius ⌈3σ⌉."""
    radius = max(1, int(torch.tensor(3 * sigma).ceil()))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, borders reflected."""
    k = gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    c = x.shape[1]
    y = nn.functional.pad(x, (r, r, 0, 0), mode="reflect")
    y = nn.functional.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = nn.functional.pad(y, (0, 0, r, r), mode="reflect")
    return nn.functional.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def corrupt_pixels(x: Tensor, kind: str, severity: int, seed: int = 0) -> Tensor:
    """Corrupt (N, C, H, W) images with values in [0, 1]; the result is clipped to [0, 1]."""
    if kind not in SEVERITIES:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in range(1, 6):
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a float (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    v = SEVERITIES[kind][severity - 1]
    if kind == "gaussian_noise":
        g = torch.Generator().manual_seed(seed)
        out = x + v * torch.randn(x.shape, generator=g).to(x)
    elif kind == "gaussian_blur":
        out = blur(x, v)
    else:
        means = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - means) * v + means
    return out.clamp(0, 1)


def corrupted(data: TensorDataset, kind: str, severity: int, seed: int = 0, mean: float = MEAN,
              std: float = STD) -> TensorDataset:
    """A normalised image data set (Fashion-MNIST's ``mean``/``std`` by default) with every image corrupted."""
    x, y = data.tensors[:2]
    pixels = x * std + mean
    return TensorDataset((corrupt_pixels(pixels, kind, severity, seed) - mean) / std, y)


@dataclass
class RobustnessReport:
    """Clean accuracy, accuracy per (corruption, severity), their mean, and the mean over clean (relative)."""

    clean: float
    corrupted: dict[str, float] = field(default_factory=dict)
    mean_corrupted: float = 0.0
    relative: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"clean {self.clean:.4f}, corrupted mean {self.mean_corrupted:.4f} "
                f"({self.relative:.3f} of clean) over {len(self.corrupted)} corruption × severity")


def robustness(model: nn.Module, test: TensorDataset, kinds: Sequence[str] = CORRUPTIONS,
               severities: Sequence[int] = (1, 3, 5), seed: int = 0) -> RobustnessReport:
    """Accuracy of ``model`` on ``test`` clean and under each corruption at each severity."""
    for k in kinds:
        if k not in SEVERITIES:
            raise ValueError(f"unknown corruption {k!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not kinds or not severities:
        raise ValueError("pass at least one corruption kind and one severity")
    clean = accuracy(model, test)
    out = {f"{k}@{s}": accuracy(model, corrupted(test, k, s, seed)) for k in kinds for s in severities}
    mean = sum(out.values()) / len(out)
    return RobustnessReport(clean, out, mean, mean / clean if clean > 0 else 0.0)
