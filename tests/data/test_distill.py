import numpy as np
import pytest
import torch
from torch import nn

from prunekit.data import distillation_loss, fit_distilled
from prunekit.datasets import load_digits
from prunekit.models import MLP


def test_distillation_loss_blends_hard_and_soft_terms():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    ce = nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, y, t, alpha=0.0, temperature=3.0), ce)
    assert distillation_loss(s, y, s, alpha=1.0, temperature=3.0).abs() < 1e-6  # student = teacher
    kl = nn.functional.kl_div(s.div(2).log_softmax(-1), t.div(2).softmax(-1), reduction="batchmean")
    assert torch.allclose(distillation_loss(s, y, t, alpha=0.25, temperature=2.0), 0.75 * ce + 0.25 * 4 * kl, atol=1e-6)


class Always(nn.Module):
    """A teacher that is sure every input is ``cls``."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.full((len(x), 10), -5.0)
        out[:, self.cls] = 5.0
        return out


def test_soft_targets_steer_the_student_and_only_kept_examples_are_used():
    data = load_digits("train")
    keep = np.arange(0, 400)
    torch.manual_seed(0)
    student = MLP()
    losses = fit_distilled(student, Always(3), data, keep, alpha=1.0, temperature=1.0, epochs=3, batch_size=32,
                           progress=False)
    assert len(losses) == 3 * (400 // 32)
    with torch.no_grad():
        pred = student(data.tensors[0]).argmax(1)
    assert (pred == 3).float().mean() > 0.95  # labels had no weight: the teacher's class wins
    torch.manual_seed(0)
    plain = MLP()
    fit_distilled(plain, Always(3), data, keep, alpha=0.0, epochs=10, lr=0.1, batch_size=32, progress=False)
    with torch.no_grad():
        assert (plain(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean() > 0.8


def test_bad_distillation_arguments():
    data = load_digits("train")
    with pytest.raises(ValueError, match="alpha"):
        fit_distilled(MLP(), MLP(), data, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        fit_distilled(MLP(), MLP(), data, temperature=0)
    with pytest.raises(ValueError, match="indices"):
        fit_distilled(MLP(), MLP(), data, indices=[0, 5000])
