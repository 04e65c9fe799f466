"""Beta-Rank filter importance, checked against hand computations on a Linear and a 1×1 convolution."""

import math

import pytest
import torch
from torch import nn

from prunekit.models.reference import SmallCNN
from prunekit.structured import prune, prune_
from prunekit.structured.config import StructuredConfig
from prunekit.structured.graph.importance import beta_rank


def test_linear_beta_rank_by_hand():
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    y = lin(x)
    # outputs (1, 3, 0) and (7, 7, 2): σ_out = (3, 2, 1); mean |w| = (1.5, 2, 0.5); σ_in = √1.25 for all
    raw = torch.tensor([1.5 * 3, 2 * 2, 0.5 * 1]) / math.sqrt(1.25)
    want = (raw - raw.min()) / (raw.max() - raw.min())  # (1, 0.875, 0)
    assert torch.allclose(beta_rank(lin.weight, x, y, lin), want.double(), atol=1e-12)
    assert torch.allclose(want, torch.tensor([1.0, 0.875, 0.0]))


def test_conv_beta_rank_uses_each_positions_own_input_spread():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0, 0.5]).view(3, 1, 1, 1))
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]]])  # position 0: σ_in 1; position 1: σ_in 2
    # filter 2:   2 · (2/1 + 4/2) = 8;  filter -1: 1 · (1/1 + 2/2) = 2;  filter 0.5: 0.5 · (0.5/1 + 1/2) = 0.5
    want = torch.tensor([8.0, 2.0, 0.5])
    want = (want - 0.5) / 7.5
    assert torch.allclose(beta_rank(conv.weight, x, conv(x), conv), want.double(), atol=1e-12)


def test_structured_prune_with_beta_rank_on_a_cnn():
    torch.manual_seed(0)
    model = SmallCNN(widths=(8, 16, 16)).eval()
    x = torch.randn(6, 1, 28, 28)
    report = prune_(model, x[:1], 0.5, "beta_rank", data=[(x, torch.zeros(6, dtype=torch.long))])
    assert model.features[0].out_channels == 4 and model.features[4].out_channels == 8
    assert report.params_after < report.params_before
    assert StructuredConfig(importance="beta_rank").importance.importance == "beta_rank"


def test_beta_rank_without_data_or_inputs_is_an_error():
    from prunekit.structured.graph.importance import BetaRankConfig, ScoreContext, score_beta_rank

    with pytest.raises(ValueError, match="needs data"):
        score_beta_rank([], BetaRankConfig(), ScoreContext(model=nn.Linear(2, 2)))


def test_lrp_channel_importance_removes_the_least_relevant_unit_not_the_smallest():
    from prunekit.structured.graph.importance import LrpConfig

    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0], [0.0, 5.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.04], [1.0, -1.0, 3.0]]))
    x, y = torch.tensor([[2.0, 1.0]]), torch.tensor([0])
    # hidden (1, 3, 5), true logit 1 + 3 + 0.2: unit relevances (1, 3, 0.2); unit 2 has the largest weights
    small = prune(net, x, 1 / 3, "l2")
    assert small[0].weight.shape[0] == 2 and torch.equal(small[0].weight[1], torch.tensor([0.0, 5.0]))
    report = prune_(net, x, 1 / 3, LrpConfig(rule="epsilon").to_dict(), data=[(x, y)])
    assert torch.equal(net[0].weight.detach(), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    assert report.params_after == 8
