"""Samplers that train on pruned data: a fixed subset, or RS2 (a fresh random subset each epoch).

Both are deterministic under a seed, follow ``set_epoch`` like ``DistributedSampler``, and shard
each epoch's indices over ``world_size`` ranks (padding by wrap-around so every rank gets the same
number of indices).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler

from ..core.deprecation import renamed_args
from .checks import check_keep


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _shard(indices: np.ndarray, rank: int, world_size: int) -> list[int]:
    per_rank = -(-len(indices) // world_size)
    padded = np.resize(indices, per_rank * world_size)  # wraps around, as DistributedSampler pads
    return padded[rank::world_size].tolist()


class SubsetSampler(Sampler[int]):
    """Yields the kept ``indices`` (e.g. from ``select``) in a new seeded order every epoch."""

    def __init__(self, indices: Any, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(f"indices must be a non-empty 1-D array of integers, got shape {idx.shape}, dtype {idx.dtype}")
        if (idx < 0).any():
            raise ValueError("indices must be non-negative")
        uniq, counts = np.unique(idx, return_counts=True)
        if len(uniq) != len(idx):
            dup = uniq[counts > 1][:5].tolist()
            raise ValueError(f"indices hold {len(idx) - len(uniq)} duplicates (e.g. {dup}); each kept example "
                             "must appear once (np.unique(indices) drops the repeats)")
        _check_shard(rank, world_size)
        self.indices = idx.astype(np.int64)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng([self.seed, self.epoch]).permutation(len(idx))]
        return iter(_shard(idx, self.rank, self.world_size))

    def __len__(self) -> int:
        return -(-len(self.indices) // self.world_size)


class RS2Sampler(Sampler[int]):
    """Repeated Sampling of Random Subsets without replacement (Okanovic et al., "Repeated Random
    Sampling for Minimizing the Time-to-Accuracy of Learning", ICLR 2024).

    Each epoch yields ``round(keep·n)`` indices; consecutive epochs walk through one seeded random
    permutation of all ``n`` examples, so none repeats until every example has been seen, then a new
    permutation starts. Call ``set_epoch`` before each epoch (an iteration without it advances by itself).
    ``fraction=`` is the deprecated name of ``keep=``.
    """

    @renamed_args(fraction="keep")
    def __init__(self, n: int, keep: float, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (the data set size) must be a positive integer, got {n!r}")
        keep = check_keep(keep)
        _check_shard(rank, world_size)
        self.n, self.keep, self.seed, self.rank, self.world_size = int(n), keep, seed, rank, world_size
        self.per_epoch = max(1, int(round(keep * self.n)))
        self.epoch = 0
        self._explicit = False

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose subset the next iteration yields."""
        self.epoch = epoch
        self._explicit = True

    def _permutation(self, round_: int) -> np.ndarray:
        return np.random.default_rng([self.seed, round_]).permutation(self.n)

    def subset(self, epoch: int) -> np.ndarray:
        """The indices of ``epoch`` (on all ranks together), in the order they are visited."""
        start = epoch * self.per_epoch
        stop = start + self.per_epoch
        rounds = range(start // self.n, (stop - 1) // self.n + 1)
        stream = np.concatenate([self._permutation(r) for r in rounds])
        offset = rounds[0] * self.n
        return stream[start - offset: stop - offset]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        if not self._explicit:
            self.epoch += 1
        self._explicit = False
        return iter(_shard(self.subset(epoch), self.rank, self.world_size))

    def __len__(self) -> int:
        return -(-self.per_epoch // self.world_size)

    @property
    def fraction(self) -> float:
        """Deprecated name of :attr:`keep`."""
        return self.keep
