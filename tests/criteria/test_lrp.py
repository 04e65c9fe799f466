"""LRP relevance ("Pruning by Explaining"), checked against a hand-computed two-layer net."""

import pytest
import torch
from torch import nn

from prunekit import prune_
from prunekit.core.mask import get_mask
from prunekit.core.scope import select_targets
from prunekit.criteria import CRITERIA, ScoreContext
from prunekit.criteria.lrp import relevance
from prunekit.methods import LrpConfig


def _two_layer():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    return net


# x = (2, 1): hidden (1, 3), logits (4, -2); true class 0, so the relevance 4 starts at logit 0.
_BATCH = [(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))]


def test_epsilon_rule_matches_the_hand_computation_and_conserves_relevance():
    net = _two_layer()
    totals, r_in = relevance(net, {"0": net[0], "2": net[2]}, _BATCH, rule="epsilon", epsilon=1e-9)
    # layer 2: s = R/z = (1, 0); R_ij = a_j w_ij s_i -> row 0 = (1·1, 3·1)
    assert torch.allclose(totals["2"], torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-6)
    # layer 1: R_h = (1, 3), z = (1, 3), s = (1, 1); R_ij = x_j w_ij s_i
    assert torch.allclose(totals["0"], torch.tensor([[2.0, -1.0], [2.0, 1.0]], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(r_in[0], torch.tensor([[4.0, 0.0]]), atol=1e-6)
    # conservation (no biases, ε → 0): every layer's weight relevance sums to the true-class logit
    for name in ("0", "2"):
        assert float(totals[name].sum()) == pytest.approx(4.0, abs=1e-6)


def test_zplus_rule_gives_negative_weights_nothing():
    net = _two_layer()
    totals, r_in = relevance(net, {"0": net[0], "2": net[2]}, _BATCH, rule="zplus", epsilon=1e-9)
    # layer 1 under z+: w+ = [[1, 0], [1, 1]], z+ = (2, 3), s = (1/2, 1)
    assert torch.allclose(totals["0"], torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(r_in[0], torch.tensor([[3.0, 1.0]]), atol=1e-6)
    assert float(r_in[0].sum()) == pytest.approx(4.0, abs=1e-6)


def test_conservation_through_conv_and_average_pooling():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=False))
    x = torch.randn(5, 1, 12, 12)
    y = net(x).argmax(1)  # explain the predicted class, whose logit is positive
    logits = net(x).gather(1, y.view(-1, 1)).sum().detach()
    totals, r_in = relevance(net, {"0": net[0], "3": net[3], "7": net[7]}, [(x, y)], rule="composite", epsilon=1e-9)
    # float32 sums of a few hundred terms per example: relative error well under 1e-4
    assert float(r_in[0].sum()) == pytest.approx(float(logits), rel=1e-4)
    for name in ("3", "7"):
        assert float(totals[name].sum()) == pytest.approx(float(logits), rel=1e-4)


def test_lrp_is_a_registered_method_that_prunes_the_least_relevant_weights():
    net = _two_layer()
    assert CRITERIA.get("lrp").needs_data
    cfg = LrpConfig(sparsity=0.25, allocation="global", rule="epsilon", scope={"skip_output": False})
    report = prune_(net, cfg, data=_BATCH)
    # relevances: layer 0 (2, -1, 2, 1), layer 2 (1, 3, 0, 0): the lowest two are -1 and one 0 (ties: earlier)
    assert report.zeros_in_scope == 2
    assert not bool(get_mask(net[0])[0, 1])
    assert int((~get_mask(net[2])).sum()) == 1
    assert LrpConfig.from_yaml(cfg.to_yaml()) == cfg


def test_lrp_refuses_unlabelled_batches_and_a_bad_rule_before_changing_anything():
    net = _two_layer()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="batches of \\(inputs, class labels\\)"):
        CRITERIA.get("lrp").fn(net, select_targets(net, scope=None), ScoreContext(data=[torch.ones(1, 2)]))
    with pytest.raises(ValueError, match="rule must be one of"):
        relevance(net, {"0": net[0]}, _BATCH, rule="alpha")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_masked_model_gives_relevance_to_the_kept_weights_only():
    from prunekit.core.mask import set_mask_

    net = _two_layer()
    set_mask_(net[0], torch.tensor([[True, False], [True, True]]))  # w[0, 1] = -1 is masked away
    totals, r_in = relevance(net, {"0": net[0], "2": net[2]}, _BATCH, rule="epsilon", epsilon=1e-9)
    # hidden (2, 3), logits (5, -1): s = (1, 0) at layer 2, R_h = (2, 3); layer 1: z = (2, 3), s = (1, 1)
    assert torch.allclose(totals["2"], torch.tensor([[2.0, 3.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(totals["0"], torch.tensor([[2.0, 0.0], [2.0, 1.0]], dtype=torch.float64), atol=1e-6)
    assert float(r_in[0].sum()) == pytest.approx(5.0, abs=1e-6)
