"""Image-level pruning of a distilled (soft-labelled) data set, after "Rethinking Large-scale Dataset
Compression: Shifting Focus From Labels to Images" (Xiao et al., 2024). The mainstream large-scale
distillation setting keeps a few images per class and trains on a teacher's soft labels; the paper finds
random images do as well there, and proposes Prune, Combine and Augment (PCA) with hard labels only:

- prune: score each image with the teacher (EL2N: ‖softmax(teacher(x)) − onehot(y)‖₂) and keep the
  easiest, per class (:func:`select_per_class`, over :func:`prunekit.data.select`);
- combine: pack ``factor``² downsampled same-class images into one image of the original size, so a budget
  of k images stores factor²·k sources (:func:`combine_images`);
- train with hard labels (and the usual augmentation, left to the training loop).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..core.fraction import check_fraction
from ..data.select import select
from ..infra.calling import call_model, output_tensor


def teacher_el2n(teacher: nn.Module, data: Dataset, batch_size: int = 512) -> np.ndarray:
    """EL2N of every example under a trained ``teacher``: ‖softmax(logits) − onehot(label)‖₂ (higher = harder)."""
    teacher.eval()
    out = []
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            p = output_tensor(call_model(teacher, x)).float().softmax(-1)
            out.append((p - nn.functional.one_hot(y, p.shape[-1]).float()).norm(dim=-1))
    if not out:
        raise ValueError("the data set is empty")
    return torch.cat(out).double().numpy()


def select_per_class(scores: np.ndarray, labels: np.ndarray, keep: float, strategy: str = "easiest",
                     seed: int = 0) -> np.ndarray:
    """Sorted indices keeping ``keep`` of each class's examples by ``strategy`` (easiest, hardest, random, …)."""
    check_fraction(keep, "keep", "(0, 1]")
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    parts = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        parts.append(rows[select(s[rows], keep, strategy=strategy, seed=seed + int(c))])
    return np.sort(np.concatenate(parts))


def combine_images(x: Tensor, y: Tensor, factor: int = 2) -> TensorDataset:
    """Pack each run of ``factor``² consecutive same-class images (in the order given, per class) into one
    image of the same size, each source downsampled by ``factor`` (area average) into its tile, row by row.
    A class's remainder that does not fill a mosaic is dropped. Returns (mosaics, their class)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"images must be (N, C, H, W) with H and W divisible by factor={factor}, got {tuple(x.shape)}")
    n = factor * factor
    small = nn.functional.avg_pool2d(x, factor)
    h, w = small.shape[-2:]
    out, labels = [], []
    for c in torch.unique(y, sorted=True):
        rows = torch.nonzero(y == c).flatten()
        for start in range(0, len(rows) - n + 1, n):
            tiles = small[rows[start:start + n]]
            canvas = torch.empty_like(x[0])
            for k in range(n):
                i, j = divmod(k, factor)
                canvas[:, i * h:(i + 1) * h, j * w:(j + 1) * w] = tiles[k]
            out.append(canvas)
            labels.append(int(c))
    if not out:
        raise ValueError(f"no class has {n} images to combine; keep more images or lower factor")
    return TensorDataset(torch.stack(out), torch.tensor(labels))
