import copy

import pytest
import torch

from prunekit import prune_
from prunekit.core.mask import get_mask
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import MLP, SmallCNN
from prunekit.train import add_lora_, bias_and_norm_params, fit, kd_loss, merge_lora_, recover_


@pytest.fixture(scope="module")
def dense_and_pruned(digits_train):
    torch.manual_seed(0)
    dense = MLP(hidden=(64, 32))
    fit(dense, digits_train, epochs=4, lr=0.1, batch_size=32, progress=False)
    pruned = copy.deepcopy(dense)
    prune_(pruned, "magnitude", 0.9, progress=False)
    return dense, pruned


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    T = 3.0
    p = torch.softmax(t / T, -1)
    kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, t, y, temperature=T, weight=0.3).item() == pytest.approx((0.3 * kl + 0.7 * ce).item(), rel=1e-5)


def test_full_and_distilled_recovery_keep_the_mask_and_help(dense_and_pruned, digits_train, digits_test):
    dense, pruned = dense_and_pruned
    start = accuracy(pruned, digits_test)
    for teacher in (None, dense):
        model = copy.deepcopy(pruned)
        mask = get_mask(model.body[0]).clone()
        report = recover_(model, digits_train, teacher=teacher, temperature=2.0, kd_weight=0.7, epochs=2, lr=0.05,
                          batch_size=32, progress=False)
        assert report.trained_params == report.total_params == sum(p.numel() for p in dense.parameters())
        assert torch.equal(get_mask(model.body[0]), mask)
        assert accuracy(model, digits_test) > start + 0.05


def test_parameter_efficient_recovery_counts_and_trains_only_its_share(dense_and_pruned, digits_train):
    _, pruned = dense_and_pruned
    model = copy.deepcopy(pruned)
    w = model.body[0].weight.detach().clone()
    report = recover_(model, digits_train, mode="bias_norm", epochs=1, batch_size=32, progress=False)
    assert report.trained_params == 64 + 32 + 10 and report.trained_fraction < 0.02
    assert torch.equal(model.body[0].weight.detach(), w)
    assert all(p.requires_grad for p in model.parameters())  # frozen tensors are given back

    lora = copy.deepcopy(pruned)
    mask = get_mask(lora.body[0]).clone()
    report = recover_(lora, digits_train, mode="lora", rank=2, epochs=1, batch_size=32, progress=False)
    assert report.trained_params == 2 * (64 + 64) + 2 * (64 + 32) + (64 + 32 + 10)
    assert lora.body[0].parametrizations.weight.__len__() == 1  # merged: only the mask remains
    assert not torch.equal(lora.body[0].weight.detach(), w)
    assert bool((lora.body[0].weight.detach()[~mask] == 0).all())  # the LoRA update kept the zeros


def test_lora_on_an_unmasked_model_merges_back_to_a_plain_weight():
    torch.manual_seed(0)
    model = MLP(hidden=(16, 8))
    x = torch.randn(3, 64)
    add_lora_(model, rank=2)
    with torch.no_grad():
        model.body[0].parametrizations.weight[0].B.normal_()
    y = model(x)
    assert merge_lora_(model) == 2
    assert not hasattr(model.body[0], "parametrizations")
    assert torch.allclose(model(x), y, atol=1e-5)


def test_bias_and_norm_params_finds_batchnorm():
    model = SmallCNN(widths=(4, 8, 8))
    n = sum(p.numel() for p in bias_and_norm_params(model))
    assert n == 2 * (4 + 8 + 8) + 10  # BatchNorm weight+bias per channel, the head's bias


def test_bad_input(dense_and_pruned, digits_train):
    _, pruned = dense_and_pruned
    with pytest.raises(ValueError, match="mode must be one of"):
        recover_(pruned, digits_train, mode="adapters")
    with pytest.raises(ValueError, match="temperature must be positive"):
        recover_(pruned, digits_train, temperature=0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        add_lora_(copy.deepcopy(pruned), rank=0)
