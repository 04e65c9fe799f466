"""Training through a sampler: the loop for static subsets and RS2, with the same optimizer and
schedule as :func:`prunekit.train.fit` (SGD with momentum, cosine learning rate over all steps)."""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset, Sampler

from ..train.loop import fit


def fit_sampled(model: nn.Module, data: Dataset, sampler: Sampler, *, epochs: int = 1, lr: float = 0.05,
                batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4,
                progress: bool = True) -> list[float]:
    """Train ``model`` for ``epochs`` passes of ``sampler`` (calling its ``set_epoch``), full batches
    only; returns the loss of every step. With ``RS2Sampler`` each epoch sees a new subset."""
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs}")
    batch_size = min(batch_size, len(sampler))  # type: ignore[arg-type]
    return fit(model, data, sampler=sampler, epochs=int(epochs), lr=lr, batch_size=batch_size, momentum=momentum,
               weight_decay=weight_decay, progress=progress)
