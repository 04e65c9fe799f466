"""Simulated clients for the federated tests: three Gaussian classes in 16 dimensions, one TensorDataset each."""

import torch
from torch.utils.data import TensorDataset


def make_clients(n: int = 3, per: int = 48, seed: int = 0) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 16, generator=g) * 2
    out = []
    for _ in range(n):
        y = torch.randint(0, 3, (per,), generator=g)
        out.append(TensorDataset(centres[y] + torch.randn(per, 16, generator=g), y))
    return out
