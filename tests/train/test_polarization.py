"""The polarizer on BatchNorm scales: its value and gradient by hand, and that it polarizes."""

import pytest
import torch
from torch import nn

from prunekit.train.polarization import Polarizer, polarization


def test_polarization_value_and_gradient_by_hand():
    g = torch.tensor([0.1, 0.9, 0.5, 0.5], requires_grad=True)
    r = polarization([g], t=1.2)
    # t‖γ‖₁ = 1.2 · 2.0; ‖γ − 0.5‖₁ = 0.4 + 0.4 + 0 + 0
    assert float(r.detach()) == pytest.approx(2.4 - 0.8)
    r.backward()
    # t·sign(γ) − sign(γ − γ̄) + mean of sign(γ − γ̄) (= 0 here): the small scale is pushed down hardest
    assert torch.allclose(g.grad, torch.tensor([2.2, 0.2, 1.2, 1.2]))


def test_training_with_the_polarizer_splits_the_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    pol = Polarizer(model, t=1.2, lam=0.05)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    gap0 = pol.gap()
    for _ in range(150):
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) + pol.penalty()).backward()
        opt.step()
        pol.clamp_()
    gammas = model[1].weight.detach()
    assert int((gammas < 1e-3).sum()) >= 3 and int((gammas > 0.2).sum()) >= 3
    assert pol.gap() > gap0
    chosen = pol.select(0.25)["1"]
    assert int(chosen.sum()) == 4 and bool((gammas[chosen].max() <= gammas[~chosen].min()))


def test_polarizer_needs_batchnorm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        Polarizer(nn.Linear(2, 2))
