"""Knowledge distillation on pruned data (Ben-Baruch et al., "Distilling the Knowledge in Data
Pruning", 2024): a student trained on the kept subset with the ground-truth labels and the soft
predictions of a teacher trained on all the data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..infra.calling import call_model, output_tensor
from ..train.loop import fit


def distillation_loss(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor, alpha: float,
                      temperature: float) -> Tensor:
    """(1 − α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) (Hinton et al., 2015)."""
    hard = nn.functional.cross_entropy(student_logits, labels)
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / temperature, -1),
                                nn.functional.log_softmax(teacher_logits / temperature, -1),
                                log_target=True, reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


class _WithTeacher(Dataset):
    """Items (x, (y, teacher_logits)) so that the plain ``fit`` loop hands both targets to the loss."""

    def __init__(self, data: Dataset, teacher_logits: Tensor) -> None:
        self.data, self.teacher_logits = data, teacher_logits

    def __len__(self) -> int:
        return len(self.teacher_logits)

    def __getitem__(self, i: int) -> tuple[Any, tuple[Any, Tensor]]:
        x, y = self.data[i][:2]
        return x, (y, self.teacher_logits[i])


def teacher_logits(teacher: nn.Module, data: Dataset, batch_size: int = 512) -> Tensor:
    """The teacher's logits on every example of ``data`` (eval mode, no gradients)."""
    teacher.eval()
    with torch.no_grad():
        return torch.cat([output_tensor(call_model(teacher, x)).float()
                          for x, _ in DataLoader(data, batch_size=batch_size)])


def fit_distilled(student: nn.Module, teacher: nn.Module, data: Dataset, indices: Any = None, *,
                  alpha: float = 0.5, temperature: float = 4.0, epochs: float = 1.0, lr: float = 0.05,
                  batch_size: int = 128, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``student`` in place on ``data`` restricted to ``indices`` (all when None) with the
    distillation loss; ``alpha`` weighs the teacher's soft targets (the paper finds the best weight
    grows as fewer examples are kept). Same optimizer and schedule as :func:`prunekit.train.fit`;
    returns the loss of every step."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the weight of the soft loss) must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = len(data)  # type: ignore[arg-type]
    if indices is not None:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"indices must be a non-empty 1-D array of integers in [0, {n}), got shape {idx.shape}")
        data = Subset(data, idx.tolist())
    targets = _WithTeacher(data, teacher_logits(teacher, data))
    batch_size = min(batch_size, len(targets))  # a batch larger than the subset would give no full batch

    def loss_fn(logits: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
        y, t = target
        return distillation_loss(logits, y, t, alpha, temperature)

    return fit(student, targets, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, loss_fn=loss_fn,  # type: ignore[arg-type]
               progress=progress)
