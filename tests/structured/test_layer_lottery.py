"""Layer pruning at initialization: which blocks are removable, and the lowest-scoring go."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.models.reference import ResNetStyle
from prunekit.structured.layer_lottery import block_scores, prune_layers_at_init_, removable_blocks


def _net():
    torch.manual_seed(0)
    return ResNetStyle(widths=(4, 8, 8), blocks=2)


def test_removable_blocks_keep_their_input_shape():
    x = torch.randn(2, 1, 28, 28)
    assert removable_blocks(_net(), x) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]


def test_magnitude_scores_are_block_sums_and_the_lowest_block_goes():
    model = _net()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for p in model.layer2[1].parameters():
            p.mul_(0.01)
    want = sum(float(m.weight.detach().abs().sum()) for m in model.layer1[1].modules() if isinstance(m, nn.Conv2d))
    assert block_scores(model, ["layer1.1"], "magnitude")["layer1.1"] == pytest.approx(want, rel=1e-6)
    params = sum(p.numel() for p in model.layer2[1].parameters())
    report = prune_layers_at_init_(model, x, 1, "magnitude")
    assert report.removed == ["layer2.1"] and isinstance(model.layer2[1], nn.Identity)
    assert report.params_before - report.params_after == params
    assert model(x).shape == (2, 10)


def test_grasp_at_init_runs_on_data_and_bad_requests_change_nothing():
    model = _net()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    report = prune_layers_at_init_(model, x, 2, "grasp", data=[(x, y)], loss_fn=F.cross_entropy)
    assert len(report.removed) == 2 and len(report.scores) == 4
    fresh = _net()
    with pytest.raises(ValueError, match="cannot be replaced by an identity"):
        prune_layers_at_init_(fresh, x, 1, "magnitude", blocks=["layer2.0"])
    with pytest.raises(ValueError, match="remove must be a whole number"):
        prune_layers_at_init_(fresh, x, 5, "magnitude")
    with pytest.raises(ValueError, match="needs data"):
        prune_layers_at_init_(fresh, x, 1, "grasp")
    assert not any(isinstance(m, nn.Identity) for m in fresh.modules())
