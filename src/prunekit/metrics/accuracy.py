"""Classification accuracy."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..infra.calling import call_model, output_tensor


def accuracy(model: nn.Module, data: Dataset | Iterable, batch_size: int = 1024) -> float:
    """Fraction of examples whose arg-max prediction equals the label; ``data`` is a Dataset of
    (input, label) pairs or an iterable of such batches. Runs in eval mode, without gradients."""
    loader = DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for x, y in loader:
                pred = output_tensor(call_model(model, x)).argmax(-1)
                correct += int((pred == y).sum())
                total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy needs at least one example")
    return correct / total
