import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.mask import MaskSnapshot, get_mask, set_mask_, weight_of
from prunekit.models import SmallCNN

from tests.tolerances import tol


def _pruned_cnn(sparsity=0.7):
    model = SmallCNN(widths=(8, 16, 32))
    pk.prune_(model, "magnitude", sparsity, allocation="global")
    return model


def test_forward_sees_masked_weight_and_dense_stays_underneath():
    lin = nn.Linear(6, 4)
    dense = lin.weight.detach().clone()
    mask = torch.rand(4, 6) > 0.5
    set_mask_(lin, mask)
    assert torch.equal(lin.weight, dense * mask)
    assert torch.equal(weight_of(lin), dense)
    x = torch.randn(3, 6)
    # F.linear's kernel may add the bias and the 6 products in another order than matmul + bias (Σ|terms| ≲ 4)
    assert torch.allclose(lin(x), x @ (dense * mask).T + lin.bias, **tol(torch.float32, k=7, scale=4))


def test_finalize_keeps_outputs_identical_and_drops_masks():
    model = _pruned_cnn()
    x = torch.randn(5, 1, 28, 28)
    model.eval()
    before = model(x)
    pk.finalize_(model)
    assert list(pk.masked_modules(model)) == []
    assert torch.equal(model(x), before)
    assert float((model.features[4].weight == 0).float().mean()) > 0.5


def test_unprune_gives_the_dense_weights_back():
    model = SmallCNN(widths=(8, 16, 32))
    dense = copy.deepcopy(model.state_dict())
    pk.prune_(model, "magnitude", 0.9)
    pk.unprune_(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense[k])


def test_masks_survive_state_dict_into_a_fresh_model():
    model = _pruned_cnn()
    sd = model.state_dict()
    fresh = SmallCNN(widths=(8, 16, 32))
    pk.load_state_dict_(fresh, sd)
    x = torch.randn(2, 1, 28, 28)
    model.eval(), fresh.eval()
    assert torch.equal(fresh(x), model(x))
    for (n1, m1), (n2, m2) in zip(pk.masked_modules(model), pk.masked_modules(fresh)):
        assert n1 == n2 and torch.equal(get_mask(m1), get_mask(m2))


def test_bad_state_dict_leaves_the_model_untouched():
    model = _pruned_cnn()
    sd = dict(model.state_dict())
    sd["fc.weight"] = torch.zeros(3, 3)  # wrong shape
    fresh = SmallCNN(widths=(8, 16, 32))
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(RuntimeError):
        pk.load_state_dict_(fresh, sd)
    assert list(pk.masked_modules(fresh)) == []
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    wrong = {k.replace("features.4", "features.99"): v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="features.99"):
        pk.load_state_dict_(fresh, wrong)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
])
def test_optimizer_steps_keep_pruned_entries_at_zero(make_opt):
    model = _pruned_cnn(0.8)
    masks = {n: get_mask(m).clone() for n, m in pk.masked_modules(model)}
    opt = make_opt(model.parameters())
    model.train()
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, module in pk.masked_modules(model):
        assert torch.equal(get_mask(module), masks[name])
        assert int(module.weight[~masks[name]].abs().sum()) == 0
        assert float(module.weight.detach()[masks[name]].abs().sum()) > 0


def test_pruning_again_only_adds_zeros():
    model = _pruned_cnn(0.5)
    first = {n: get_mask(m).clone() for n, m in pk.masked_modules(model)}
    pk.prune_(model, "random", 0.8, seed=3)
    for name, module in pk.masked_modules(model):
        new = get_mask(module)
        assert not bool((new & ~first[name]).any())  # nothing revived
    report = pk.prune_(model, "magnitude", 0.3)  # lower target: nothing changes
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)


def test_snapshot_restores_masks_exactly():
    model = _pruned_cnn(0.5)
    snap = MaskSnapshot(model)
    before = {n: get_mask(m).clone() for n, m in pk.masked_modules(model)}
    set_mask_(model.fc, torch.zeros_like(model.fc.weight, dtype=torch.bool))
    set_mask_(model.features[4], torch.zeros_like(weight_of(model.features[4]), dtype=torch.bool))
    snap.restore()
    after = {n: get_mask(m) for n, m in pk.masked_modules(model)}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_unprune_after_finalize_is_an_error_not_a_silent_no_op():
    import prunekit as pk
    from prunekit.models import MLP

    model = MLP()
    pk.prune_(model, "magnitude", 0.5)
    report = pk.finalize_(model)
    assert report.action == "finalized" and len(report.tensors) >= 1 and "finalized:" in str(report)
    with pytest.raises(ValueError, match="unprune_ cannot restore dense weights: finalize_ baked"):
        pk.unprune_(model)
    fresh = MLP()
    assert pk.unprune_(fresh).tensors == []  # never pruned: nothing to do, no error
