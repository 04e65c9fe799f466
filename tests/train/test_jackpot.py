"""Lottery Jackpots: masks searched on frozen weights, the short restriction by hand."""

import pytest
import torch
from torch import nn

from prunekit.core.mask import get_mask
from prunekit.train.jackpot import Jackpot, short_restriction, top_k_mask


def test_short_restriction_keeps_only_loss_decreasing_flips_and_the_count():
    old = torch.tensor([True, True, False, False])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.8])  # plain top-2 would swap to {2, 3}
    grad = torch.tensor([1.0, -1.0, -1.0, 1.0])
    # revive 2 (grad < 0: allowed), revive 3 (grad > 0: refused); remove 0 (grad > 0: allowed), remove 1 (refused)
    assert short_restriction(old, scores, grad).tolist() == [False, True, True, False]
    # no allowed removal to pair with: nothing changes
    assert short_restriction(old, scores, torch.tensor([-1.0, -1.0, -1.0, -1.0])).tolist() == old.tolist()
    assert top_k_mask(scores, 2).tolist() == [False, False, True, True]


def test_search_leaves_the_weights_untouched_and_finalizes_to_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    before = [p.detach().clone() for p in model.parameters()]
    jp = Jackpot(model, 0.75, scope={"skip_output": False})
    first = {n: m.clone() for n, m in ((t.name, pm.mask) for t, pm in jp._masks())}
    assert torch.equal(first["0"], top_k_mask(before[0].abs(), 80))  # magnitude initialisation
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(jp.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(float(loss))
        opt.step()
        jp.update_masks_()
    assert jp.flips > 0 and losses[-1] < losses[0]
    report = jp.finalize_()
    assert report.sparsity == pytest.approx(0.75, abs=0.01)
    # the weights (now under the masks) and biases are the pre-trained ones, bit for bit: nothing trained them
    dense = [model[0].parametrizations.weight.original, model[0].bias, model[2].parametrizations.weight.original,
             model[2].bias]
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, dense))
    assert int(get_mask(model[0]).sum()) == 80 and int(get_mask(model[2]).sum()) == 24
    assert all(p.requires_grad for p in model.parameters())
