"""A plain supervised training loop, used by the demo, the tests and the benchmarks; masks stay
in force because the masked weight is what forward sees."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def fit(model: nn.Module, data: Dataset, *, epochs: float = 1.0, lr: float = 0.05, batch_size: int = 128,
        momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
        progress: bool = True) -> list[float]:
    """Train ``model`` with SGD (momentum, cosine learning rate) for ``epochs`` (fractions allowed);
    returns the loss of every step. Deterministic under ``seed``."""
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True)
    steps = max(1, round(epochs * len(loader)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="train", disable=not progress, leave=False)
    while len(losses) < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
            bar.update(1)
            if len(losses) >= steps:
                break
    bar.close()
    model.eval()
    return losses
