"""Corruptions: their defining step on hand-made images, and the robustness report's figures."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.apps.robustness import blur, corrupt_pixels, corrupted, gaussian_kernel, robustness


def test_contrast_scales_around_the_image_mean():
    x = torch.tensor([0.0, 1.0, 0.5, 0.5]).view(1, 1, 2, 2)  # mean 0.5
    y = corrupt_pixels(x, "contrast", 1)  # c = 0.4
    torch.testing.assert_close(y.flatten(), torch.tensor([0.3, 0.7, 0.5, 0.5]))


def test_blur_keeps_a_constant_image_and_spreads_a_point():
    x = torch.full((1, 1, 9, 9), 0.25)
    torch.testing.assert_close(blur(x, 1.0), x)
    d = torch.zeros(1, 1, 9, 9)
    d[0, 0, 4, 4] = 1.0
    y = blur(d, 1.0)
    k = gaussian_kernel(1.0)  # radius 3, 7 taps: the blurred point is the outer product of the kernel
    torch.testing.assert_close(y[0, 0, 1:8, 1:8], torch.outer(k, k))
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-6)


def test_noise_has_its_severity_std_and_is_seeded():
    x = torch.full((4, 1, 28, 28), 0.5)
    y = corrupt_pixels(x, "gaussian_noise", 3)  # σ = 0.18, clipping at 0/1 is > 2.7σ away: negligible
    assert float((y - x).std()) == pytest.approx(0.18, rel=0.05)
    assert torch.equal(y, corrupt_pixels(x, "gaussian_noise", 3))


def test_bad_input():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_pixels(x, "snow", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt_pixels(x, "contrast", 6)


def test_report_of_a_constant_model():
    # a model that always says class 0: accuracy = share of class 0 under every corruption
    y = torch.tensor([0, 0, 0, 1])
    data = TensorDataset(torch.rand(4, 1, 8, 8), y)

    class Zero(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)

    rep = robustness(Zero(), data, severities=(1, 5))
    assert rep.clean == 0.75 and rep.mean_corrupted == 0.75 and rep.relative == 1.0
    assert sorted(rep.corrupted) == sorted(f"{k}@{s}" for k in ("gaussian_noise", "gaussian_blur", "contrast")
                                           for s in (1, 5))
    assert corrupted(data, "contrast", 2).tensors[0].shape == (4, 1, 8, 8)
