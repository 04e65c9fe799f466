"""Structured importances as a registry of typed configs, their scores on a hand-checkable model, and the
MAC counter the reports use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit.structured as ps
from prunekit.core.config import ConfigError
from prunekit.structured.graph.importance import ScoreContext, importance_config, score_groups


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _model():
    m = Two().eval()
    with torch.no_grad():
        m.a.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]]))
        m.b.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 2]]))
    return m


def test_the_registry_names_every_importance_with_its_config():
    assert ps.IMPORTANCES.names() == ["activation", "beta_rank", "bn_scale", "l1", "l2", "lrp", "random", "taylor"]
    assert importance_config("taylor").to_dict() == {"importance": "taylor", "batches": None}
    assert importance_config({"importance": "activation", "batches": 2}).batches == 2
    with pytest.raises(ValueError, match="did you mean 'taylor'"):
        importance_config("tayler")
    with pytest.raises(ConfigError, match="unknown option 'batch'"):
        importance_config({"importance": "taylor", "batch": 2})


def test_group_magnitudes_sum_rows_and_columns_of_the_unit():
    model = _model()
    x = torch.ones(1, 3)
    (group,) = ps.groups(model, x)
    l1 = score_groups([group], "l1", ScoreContext(model))[0]
    l2 = score_groups([group], "l2", ScoreContext(model))[0]
    # unit i: row i of a plus column i of b
    assert l1.tolist() == [2.0, 3.0, 4.0, 5.0] and l2.tolist() == [2.0, 5.0, 10.0, 7.0]


def test_activation_weighs_each_channel_by_what_reaches_the_next_layer():
    model = _model()
    x = torch.tensor([[1.0, 0.0, 0.0]])  # only channels 0 and 3 of a fire
    (group,) = ps.groups(model, x)
    act = score_groups([group], "activation", ScoreContext(model, example_inputs=x))[0]
    # E[h²] · ‖b column‖²: h = relu(a x) = [1, 0, 0, 1]
    assert act.tolist() == [1.0, 0.0, 0.0, 4.0]


def test_taylor_is_the_square_of_the_summed_gradient_times_weight():
    model = _model()
    x, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([1])
    (group,) = ps.groups(model, x)
    loss_fn = nn.functional.cross_entropy
    got = score_groups([group], "taylor", ScoreContext(model, loss_fn=loss_fn, data=[(x, y)]))[0]
    model.zero_grad()
    loss_fn(model(x), y).backward()
    ga, gb = model.a.weight.grad * model.a.weight, model.b.weight.grad * model.b.weight
    expected = (ga.sum(1) + gb.sum(0)).double().square()
    torch.testing.assert_close(got, expected.detach())


def test_non_finite_scores_are_refused_with_the_group_named():
    model = _model()
    with torch.no_grad():
        model.a.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite scores.*'l2'|'l2'.*non-finite"):
        ps.prune(model, torch.ones(1, 3), sparsity=0.5)


def test_count_macs_counts_convs_linears_and_attention():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    assert ps.count_macs(conv, torch.randn(1, 3, 4, 4)) == 8 * 16 * 27 + 5 * 128
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 8)
    # projections: 4 · tokens · 8 · 8; scores and values: 2 · tokens · tokens · 8
    assert ps.count_macs(attn, (x, x, x)) == 4 * 5 * 64 + 2 * 5 * 5 * 8
