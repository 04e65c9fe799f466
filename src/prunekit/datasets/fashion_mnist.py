"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (no download at run time)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: ``root``, ``$PRUNEKIT_FASHION_MNIST``, or Debian's location."""
    path = Path(root or os.environ.get("PRUNEKIT_FASHION_MNIST", DEFAULT_ROOT))
    if not all((path / f).exists() for pair in _FILES.values() for f in pair):
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed at {path}. Install it with "
            "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or point "
            "PRUNEKIT_FASHION_MNIST at a folder holding the four *-ubyte.gz files."
        )
    return path


def fashion_mnist_available(root: str | os.PathLike | None = None) -> bool:
    """Whether the Fashion-MNIST files can be found."""
    try:
        fashion_mnist_root(root)
        return True
    except FileNotFoundError:
        return False


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, limit: int | None = None,
                       normalize: bool = True) -> TensorDataset:
    """Fashion-MNIST as a TensorDataset of (N, 1, 28, 28) float images and int64 labels.

    ``limit`` keeps the first N examples; ``normalize`` applies the standard mean/std.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = fashion_mnist_root(root)
    images = _read_idx(folder / _FILES[split][0])
    labels = _read_idx(folder / _FILES[split][1])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    if normalize:
        x = (x - MEAN) / STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
