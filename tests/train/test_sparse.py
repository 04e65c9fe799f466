import pytest
import torch

from prunekit.core.allocate import erk_densities
from prunekit.core.mask import get_mask, load_state_dict_, weight_of
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import MLP
from prunekit.train import SET, DynamicSparse, GraNet, RigL, fit, sparse_init_



def batches(data, size, n=None):
    out = list(torch.utils.data.DataLoader(data, batch_size=size))
    return out if n is None else out[:n]


def _model():
    torch.manual_seed(0)
    return MLP(hidden=(64, 32))


def test_sparse_init_follows_erk_densities():
    model = _model()
    sparse_init_(model, 0.8)
    want = erk_densities({"body.0": (64, 64), "body.2": (32, 64)}, 0.2)
    for name, module in (("body.0", model.body[0]), ("body.2", model.body[2])):
        mask = get_mask(module)
        assert mask.float().mean().item() == pytest.approx(want[name], abs=2e-3)
        assert float(weight_of(module).detach()[~mask].abs().sum()) == 0.0
    assert want["body.2"] > want["body.0"]  # the smaller layer stays denser


def test_set_swaps_connections_and_keeps_each_layer_count(digits_train):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dyn = SET(model, 0.8, update_every=5, end_step=20, drop_fraction=0.3, optimizer=opt)
    start = {n: get_mask(m).clone() for n, m in (("body.0", model.body[0]), ("body.2", model.body[2]))}
    fit(model, digits_train, epochs=1, batch_size=64, progress=False, on_step=lambda s: dyn.step())
    assert [h["step"] for h in dyn.history] == [5, 10, 15, 20]
    assert dyn.history[0]["swapped"] > 0 and dyn.history[-1]["swapped"] == 0  # cosine decay reaches 0
    for name, module in (("body.0", model.body[0]), ("body.2", model.body[2])):
        now = get_mask(module)
        assert int(now.sum()) == int(start[name].sum())
        assert not torch.equal(now, start[name])
    assert dyn.sparsity == pytest.approx(0.8, abs=2e-3)


def test_rigl_regrows_where_the_dense_gradient_is_largest(digits_train):
    model = _model()
    data = batches(digits_train, 256, 1)
    dyn = RigL(model, 0.9, data=data, update_every=1, end_step=100, drop_fraction=0.2)
    grads = dyn._dense_grads(None)
    before = get_mask(model.body[0]).clone()
    dyn.step()
    after = get_mask(model.body[0])
    grown = after & ~before
    assert int(grown.sum()) > 0
    # every grown weight's |gradient| is at least that of any candidate left out
    g = grads["body.0"].abs()
    left_out = ~before & ~after
    assert float(g[grown].min()) >= float(g[left_out].max())
    assert float(weight_of(model.body[0]).detach()[grown].abs().sum()) == 0.0  # regrown at zero


def test_granet_prunes_gradually_with_regrowth_and_learns(digits_train, digits_test):
    model = _model()
    data = batches(digits_train, 64)
    dyn = GraNet(model, 0.9, data=data, update_every=10, start_step=0, end_step=60, drop_fraction=0.3)
    assert dyn.sparsity == 0.0
    fit(model, digits_train, epochs=4, lr=0.1, batch_size=64, progress=False, on_step=lambda s: dyn.step())
    targets = [h["target"] for h in dyn.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)
    assert all(h["sparsity"] == pytest.approx(h["target"], abs=2e-3) for h in dyn.history)
    assert sum(h["swapped"] for h in dyn.history) > 0
    assert accuracy(model, digits_test) > 0.8


def test_state_dict_resumes_the_masks_and_the_step():
    model = _model()
    dyn = SET(model, 0.8, update_every=1, end_step=10)
    dyn.step(); dyn.step()
    state = dyn.state_dict()
    other = _model()
    dyn2 = SET(other, 0.8, update_every=1, end_step=10, seed=5)
    load_state_dict_(other, model.state_dict())  # the weights travel in the model's own state dict
    dyn2.load_state_dict(state)
    dyn.step(); dyn2.step()
    assert torch.equal(get_mask(model.body[0]), get_mask(other.body[0]))
    assert dyn2.step_count == 3


def test_bad_input():
    with pytest.raises(ValueError, match="needs data"):
        RigL(_model(), 0.9, data=None)
    with pytest.raises(ValueError, match="regrow must be"):
        DynamicSparse(_model(), 0.9, regrow="magic")
    with pytest.raises(ValueError, match="sparsity must be"):
        SET(_model(), 1.2)
    with pytest.raises(ValueError, match="must not exceed"):
        GraNet(_model(), 0.5, data=[], initial_sparsity=0.7)
