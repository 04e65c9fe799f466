"""AdamR: Adam with a stable, decoupled pull toward the pretrained weights, checked against the update by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunekit.core.config import ConfigError
from prunekit.train.adamr import AdamR, AdamRConfig


def _reference(p0, grads, lr, lam, b1, b2, eps, reg="l2"):
    """The paper's update written out with Python floats: moments, v̄ over every element, decay, Adam's step."""
    p, anchor = list(p0), list(p0)
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        vhat = [vi / (1 - b2 ** t) for vi in v]
        root = math.sqrt(sum(vhat) / len(vhat)) or 1.0
        decayed = []
        for pi, ai in zip(p, anchor):
            d = pi - ai
            pull = (1.0 if d > 0 else -1.0 if d < 0 else 0.0) if reg == "l1" else d
            decayed.append(pi - lr * lam / root * pull)
        p = [pi - lr * (mi / (1 - b1 ** t)) / (math.sqrt(vh) + eps) for pi, mi, vh in zip(decayed, m, vhat)]
    return p


@pytest.mark.parametrize("reg", ["l2", "l1"])
def test_update_matches_the_formula_by_hand(reg):
    p0 = [1.0, -2.0, 0.5]
    grads = [[0.5, -1.0, 0.0], [0.1, 0.3, -0.2], [-0.4, 0.2, 0.6]]
    w = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = AdamR([w], lr=0.1, reg_weight=0.5, betas=(0.9, 0.99), eps=1e-8, reg=reg)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    want = _reference(p0, grads, 0.1, 0.5, 0.9, 0.99, 1e-8, reg)
    assert w.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    # the first step has no delta yet, so it is Adam's: every element moves by lr against its gradient's sign
    w2 = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt2 = AdamR([w2], lr=0.1, reg_weight=0.5, betas=(0.9, 0.99), reg=reg)
    w2.grad = torch.tensor(grads[0], dtype=torch.float64)
    opt2.step()
    assert w2.tolist() == pytest.approx([0.9, -1.9, 0.5], abs=1e-7)


def test_second_moment_mean_spans_every_parameter():
    """v̄ is one number over all parameters of all groups, not one per tensor."""
    a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    opt = AdamR([{"params": [a]}, {"params": [b], "reg_weight": 0.0}], lr=0.1, reg_weight=1.0, betas=(0.0, 0.0))
    a.grad, b.grad = torch.tensor([2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    opt.step()  # a → 0.9 (Adam), b unchanged
    a.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    root = math.sqrt(4.0 / 4)  # v̂ = [4, 0, 0, 0] with β₂ = 0
    assert float(a.detach()) == pytest.approx(0.9 - 0.1 * 1.0 / root * (0.9 - 1.0) - 0.1, abs=1e-8)  # ε moves it by 1e-9
    assert b.tolist() == [1.0, 1.0, 1.0]


def test_no_pull_is_adam():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 3)
    m1 = torch.nn.Linear(8, 3)
    m2 = copy.deepcopy(m1)
    o1, o2 = AdamR(m1.parameters(), lr=1e-2, reg_weight=0.0), torch.optim.Adam(m2.parameters(), lr=1e-2)
    for _ in range(25):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def _fit(reg_weight: float, reg: str = "l2", steps: int = 200):
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 4)
    x = torch.randn(256, 16)
    y = torch.nn.Linear(16, 4)(x).detach()  # a target far from the base: large deltas unless pulled back
    model = copy.deepcopy(base)
    opt = AdamR(model.parameters(), lr=1e-2, reg_weight=reg_weight, reg=reg)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    delta = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), base.parameters())]).detach()
    return loss.item(), delta


def test_pull_shrinks_the_deltas_monotonically():
    (l0, d0), (l1, d1), (l2, d2) = _fit(0.0), _fit(0.5), _fit(5.0)
    m0, m1, m2 = (float(d.abs().mean()) for d in (d0, d1, d2))
    assert m0 > 1.5 * m1 > 1.5 * 1.5 * m2 > 0  # stronger pull, smaller deltas (0.168, 0.092, 0.019)
    assert float(d2.std()) < float(d0.std())
    assert l0 < l1 < l2  # paid for in fit
    _, dl1 = _fit(0.5, reg="l1")
    # L1 parks some deltas within a step of zero (7 of 68 here); L2 at the same strength parks none
    assert int((dl1.abs() < 1e-3).sum()) >= 3 > int((d1.abs() < 1e-3).sum())


def test_state_dict_keeps_the_pretrained_anchors():
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randn(32, 2)

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    start = torch.nn.Linear(6, 2)
    whole = copy.deepcopy(start)
    o = AdamR(whole.parameters(), lr=5e-2, reg_weight=0.3)
    run(whole, o, 6)
    part = copy.deepcopy(start)
    o1 = AdamR(part.parameters(), lr=5e-2, reg_weight=0.3)
    run(part, o1, 3)
    saved = copy.deepcopy(o1.state_dict())
    resumed = copy.deepcopy(part)
    o2 = AdamR(resumed.parameters(), lr=5e-2, reg_weight=0.3)  # its fresh anchors are the step-3 weights ...
    o2.load_state_dict(saved)  # ... until the checkpoint brings back the pretrained ones
    for p, q in zip(resumed.parameters(), start.parameters()):
        torch.testing.assert_close(o2.state[p]["anchor"], q.detach())
    run(resumed, o2, 3)
    for p, q in zip(resumed.parameters(), whole.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_bad_settings_are_refused_and_change_nothing():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="reg"):
        AdamR([w], reg="l3")
    with pytest.raises(ConfigError, match="reg_weight"):
        AdamR([w], reg_weight=-1.0)
    with pytest.raises(ConfigError, match="did you mean 'reg_weight'"):
        AdamR([w], reg_wieght=0.1)
    with pytest.raises(TypeError, match="either config"):
        AdamR([w], AdamRConfig(), lr=1e-3)
    opt = AdamR([w], config=AdamRConfig(lr=1e-3))
    extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="reg must be 'l2' or 'l1'"):
        opt.add_param_group({"params": [extra], "reg": "l0"})
    assert len(opt.param_groups) == 1 and extra not in opt.state
    e = torch.nn.Embedding(4, 2, sparse=True)
    opt = AdamR(e.parameters())
    e(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
