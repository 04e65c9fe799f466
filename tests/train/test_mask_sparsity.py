"""MaskSparsity: L1 only on the scales of the channels selected for pruning."""

import pytest
import torch
from torch import nn

from prunekit.train.mask_sparsity import MaskSparsity


def _model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.1, 0.8, 0.2]))
        model[4].weight.copy_(torch.tensor([0.05, 0.9]))
    return model


def test_penalty_acts_only_on_the_selected_channels():
    model = _model()
    ms = MaskSparsity(model, 0.5, lam=0.1)
    # the 3 smallest |γ| of 6: 0.05 (layer 4), -0.1 and 0.2 (layer 1)
    assert ms.masks["1"].tolist() == [False, True, False, True] and ms.masks["4"].tolist() == [True, False]
    p = ms.penalty()
    assert float(p) == pytest.approx(0.1 * (0.1 + 0.2 + 0.05))
    p.backward()
    assert torch.allclose(model[1].weight.grad, torch.tensor([0.0, -0.1, 0.0, 0.1]))
    assert torch.allclose(model[4].weight.grad, torch.tensor([0.1, 0.0]))


def test_given_masks_are_checked():
    model = _model()
    ms = MaskSparsity(model, masks={"4": torch.tensor([False, True])})
    assert ms.selected == 1
    with pytest.raises(ValueError, match="not BatchNorm layers"):
        MaskSparsity(model, masks={"0": torch.tensor([True])})
    with pytest.raises(ValueError, match="must be a bool tensor"):
        MaskSparsity(model, masks={"4": torch.tensor([1, 0])})
