"""scikit-learn's bundled 8×8 digits (1,797 images, 10 classes): offline, tiny, for fast tests."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def load_digits(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    """Digits as a TensorDataset of (N, 64) floats scaled to [0, 1] and int64 labels; the split is
    stratified and deterministic under ``seed``."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = _load()
    x = data.data.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    if split != "all":
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
