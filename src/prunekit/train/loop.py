"""A plain supervised training loop, used by the demo, the tests and the benchmarks; masks stay
in force because the masked weight is what forward sees."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

BatchLoss = Callable[[nn.Module, Tensor, Tensor], Tensor]


def fit(model: nn.Module, data: Dataset, *, epochs: float = 1.0, lr: float = 0.05, batch_size: int = 128,
        momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
        progress: bool = True, on_step: Callable[[int], None] | None = None,
        parameters: Iterable[nn.Parameter] | None = None, batch_loss: BatchLoss | None = None,
        sampler: Sampler | None = None) -> list[float]:
    """Train ``model`` with SGD (momentum, cosine learning rate) for ``epochs`` (fractions allowed);
    returns the loss of every step. Deterministic under ``seed``.

    Optional: ``on_step(step)`` is called after every optimizer step (step counts from 1; pruning
    schedules and :func:`prunekit.train.find_ticket_` hook in here); ``parameters`` restricts training
    to those tensors (parameter-efficient recovery); ``batch_loss(model, x, y)`` replaces
    ``loss_fn(model(x), y)`` (knowledge distillation); ``sampler`` draws the examples of each pass
    instead of a seeded shuffle (its ``set_epoch(pass)`` is called before each, as RS2 needs)."""
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    n = len(sampler) if sampler is not None else len(data)  # type: ignore[arg-type]
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({n} examples); "
                         "pass a smaller batch_size")
    if sampler is not None:
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True)
    steps = max(1, round(epochs * len(loader)))
    params = list(model.parameters() if parameters is None else parameters)
    if not params:
        raise ValueError("no parameters to train: pass parameters= with at least one tensor")
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="train", disable=not progress, leave=False)
    passes = 0
    while len(losses) < steps:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(passes)
        passes += 1
        for x, y in loader:
            loss = batch_loss(model, x, y) if batch_loss is not None else loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            if on_step is not None:
                on_step(len(losses))
            if len(losses) >= steps:
                break
    bar.close()
    model.eval()
    return losses


def steps_per_run(data: Dataset, *, epochs: float = 1.0, batch_size: int = 128) -> int:
    """How many optimizer steps :func:`fit` takes for these settings (to place a rewind point or a schedule)."""
    batches = len(data) // batch_size
    if batches == 0:
        raise ValueError(f"the data set has {len(data)} examples, fewer than one batch of {batch_size}")
    return max(1, round(epochs * batches))
