"""The minibatches the applications' training loops draw: a seeded shuffle per pass, whole batches only, for
a number of steps set by ``epochs`` (fractions allowed)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def minibatches(n: int, batch_size: int, epochs: float, seed: int) -> Iterator[Tensor]:
    """Index batches over ``n`` examples: ``max(1, round(epochs · (n // batch_size)))`` of them, each pass a
    fresh permutation from one generator seeded with ``seed`` (the last partial batch of a pass is dropped)."""
    if n < batch_size:
        raise ValueError(f"need at least one batch of {batch_size} examples, got {n}")
    g = torch.Generator().manual_seed(seed)
    steps = max(1, round(epochs * (n // batch_size)))
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]
            done += 1
            if done >= steps:
                return


def steps_of(n: int, batch_size: int, epochs: float) -> int:
    """How many batches :func:`minibatches` gives (a schedule's length)."""
    return max(1, round(epochs * (n // batch_size)))
