import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.core.scope import select_targets
from prunekit.criteria import CRITERIA, ScoreContext
from prunekit.methods import GraspConfig


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


def _data(n=2):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(n)]


def _manual_grads(model, data):
    params = [model[0].weight, model[2].weight]
    grads = []
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        grads.append(torch.autograd.grad(loss, params))
    return params, grads


def test_registry_has_the_six_criteria_and_their_needs():
    assert {"magnitude", "random", "snip", "grasp", "synflow", "taylor"} <= set(CRITERIA.names())
    assert CRITERIA.get("snip").needs_data and CRITERIA.get("taylor").needs_data and CRITERIA.get("grasp").needs_data
    assert CRITERIA.get("synflow").needs_inputs and not CRITERIA.get("magnitude").needs_data


def test_magnitude_and_random():
    model = _mlp()
    targets = select_targets(model)
    mag = CRITERIA.get("magnitude").fn(model, targets, ScoreContext())
    assert torch.equal(mag["0"], model[0].weight.detach().abs())
    r1 = CRITERIA.get("random").fn(model, targets, ScoreContext(seed=5))
    r2 = CRITERIA.get("random").fn(model, targets, ScoreContext(seed=5))
    r3 = CRITERIA.get("random").fn(model, targets, ScoreContext(seed=6))
    assert torch.equal(r1["2"], r2["2"]) and not torch.equal(r1["2"], r3["2"])


def test_snip_is_abs_of_summed_gradient_times_weight():
    model, data = _mlp(), _data()
    params, grads = _manual_grads(model, data)
    expected = (sum(g[0] for g in grads) * params[0]).abs()
    got = CRITERIA.get("snip").fn(model, select_targets(model), ScoreContext(data=data, loss_fn=F.cross_entropy))
    assert torch.allclose(got["0"], expected.detach(), atol=1e-6)
    assert model[0].weight.grad is None  # the model's own gradients are untouched


def test_taylor_is_mean_squared_gradient_times_weight():
    model, data = _mlp(), _data(3)
    params, grads = _manual_grads(model, data)
    expected = sum((g[1] * params[1]).pow(2) for g in grads) / 3
    got = CRITERIA.get("taylor").fn(model, select_targets(model), ScoreContext(data=data, loss_fn=F.cross_entropy))
    assert torch.allclose(got["2"], expected.detach(), atol=1e-7)


def test_grasp_is_weight_times_hessian_gradient_product():
    model, data = _mlp(), _data(1)
    params = [model[0].weight, model[2].weight]
    x, y = data[0]
    t = 7.0  # not the default 200: the criterion reads the temperature from its config
    g = torch.autograd.grad(F.cross_entropy(model(x) / t, y), params)
    g2 = torch.autograd.grad(F.cross_entropy(model(x) / t, y), params, create_graph=True)
    z = sum((a * b.detach()).sum() for a, b in zip(g2, g))
    hg = torch.autograd.grad(z, params)
    cfg = GraspConfig(sparsity=0.5, temperature=t)
    got = CRITERIA.get("grasp").fn(model, select_targets(model), ScoreContext(data=data, loss_fn=F.cross_entropy,
                                                                              config=cfg))
    assert torch.allclose(got["0"], (params[0] * hg[0]).detach(), rtol=1e-4, atol=1e-12)
    assert bool((got["0"] < 0).any())  # GraSP scores are signed


def test_synflow_on_a_linear_chain_matches_path_counts():
    # Two bias-free linear layers: R = 1ᵀ|W2||W1|1, so dR/dW1[j,i] = Σ_k |W2[k,j]|.
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False))
    targets = select_targets(model)
    got = CRITERIA.get("synflow").fn(model, targets, ScoreContext(example_inputs=torch.randn(5, 3)))
    w1, w2, w3 = (m.weight.detach().abs().double() for m in model)
    upstream = (w3.sum(0) @ w2)  # (4,) flow from the output back to layer 1's outputs
    expected = (upstream[:, None] * w1).float()  # input is all ones
    assert torch.allclose(got["0"], expected, rtol=1e-5)
    assert model[0].weight.min() < 0  # the model itself was not linearized in place


def test_synflow_rejects_token_ids():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="floating-point"):
        CRITERIA.get("synflow").fn(model, select_targets(model), ScoreContext(example_inputs=torch.zeros(2, 3).long()))
