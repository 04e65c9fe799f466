"""Training through a sampler: the loop for static subsets and RS2, with the same optimizer and
schedule as :func:`prunekit.train.fit` (SGD with momentum, cosine learning rate over all steps)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm


def fit_sampled(model: nn.Module, data: Dataset, sampler: Sampler, *, epochs: int = 1, lr: float = 0.05,
                batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4,
                progress: bool = True) -> list[float]:
    """Train ``model`` for ``epochs`` passes of ``sampler`` (calling its ``set_epoch``), full batches
    only; returns the loss of every step. With ``RS2Sampler`` each epoch sees a new subset."""
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs}")
    batch_size = min(batch_size, len(sampler))  # type: ignore[arg-type]
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    steps = int(epochs) * len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="train", disable=not progress, leave=False)
    for epoch in range(int(epochs)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
    bar.close()
    model.eval()
    return losses
