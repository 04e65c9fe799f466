"""PDP soft masks: the threshold and the mask formula by hand, and the hard masks they become."""

import math

import pytest
import torch
from torch import nn

from prunekit.core.mask import get_mask
from prunekit.train.pdp import PDP, pdp_mask, pdp_threshold


def test_threshold_is_the_midpoint_between_the_last_pruned_and_first_kept_square():
    w = torch.tensor([0.1, -0.4, 0.3, -0.2])  # w² sorted: 0.01, 0.04, 0.09, 0.16
    assert float(pdp_threshold(w, 0.5)) == pytest.approx((0.04 + 0.09) / 2)
    assert float(pdp_threshold(w, 0.25)) == pytest.approx((0.01 + 0.04) / 2)
    assert float(pdp_threshold(w, 0.0)) < 0.01 and float(pdp_threshold(w, 1.0)) > 0.16


def test_mask_is_sigmoid_of_w2_minus_t2_over_tau():
    w = torch.tensor([0.1, -0.4, 0.3, -0.2])
    tau = 0.01
    t2 = 0.065
    want = [1 / (1 + math.exp(-(x * x - t2) / tau)) for x in (0.1, -0.4, 0.3, -0.2)]
    # float32 of a single sigmoid: a few ulps
    assert torch.allclose(pdp_mask(w, 0.5, tau), torch.tensor(want), atol=1e-6)
    assert pdp_mask(w, 0.5, tau)[1] > 0.99 and pdp_mask(w, 0.5, tau)[0] < 0.01


def test_pdp_trains_through_the_soft_mask_and_finalizes_to_the_threshold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pdp = PDP(model, 0.75, tau=1e-3, scope={"skip_output": False})
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert model[0].parametrizations.weight.original.grad is not None
    assert 0.6 < pdp.soft_sparsity() <= 0.8
    w = model[0].parametrizations.weight.original.detach().clone()
    t2 = pdp_threshold(w, 0.75)
    report = pdp.finalize_()
    assert report.sparsity == pytest.approx(0.75)
    assert torch.equal(get_mask(model[0]), w.square() > t2)
    with pytest.raises(ValueError, match="already called"):
        pdp.finalize_()


def test_pdp_refuses_bad_settings_before_changing_anything():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="tau must be > 0"):
        PDP(model, 0.5, tau=0)
    assert not hasattr(model[0], "parametrizations")
