"""APTP: the optimal-transport assignment spreads a batch over the codes, the contrastive term rewards
architecture similarities that mirror prompt similarities, and the trained codes become pruned UNets whose
class-average MACs meet the budget and which sample what the routed masks compute."""

from __future__ import annotations

import pytest
import torch

from prunekit.diffusion.aptp import (APTPConfig, code_models, contrastive_loss, routed_sample, sinkhorn,
                                     train_aptp)
from prunekit.diffusion.ddpm import ddim_sample
from prunekit.diffusion.model import UNetConfig, build_unet
from prunekit.metrics.macs import count_macs
from tests.tolerances import tol

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    images = torch.rand((64, 1, 8, 8), generator=g) * 2 - 1
    labels = torch.arange(64) % 10
    unet = build_unet(TINY, seed=0).eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    result = train_aptp(unet, images, labels, APTPConfig(num_codes=3, macs=0.7, iterations=6, batch_size=8))
    return unet, images, labels, result, before


def test_sinkhorn_balances_codes_where_argmax_would_collapse():
    scores = torch.zeros(12, 3)
    scores[:, 0] = 1.0  # every sample prefers code 0
    scores += 0.01 * torch.arange(12.0)[:, None] * torch.tensor([0.0, 1.0, -1.0])
    plan = sinkhorn(scores, epsilon=0.05, iterations=50)
    # rows are assignments (sum 1: the last normalisation), columns approach 12/3 = 4 samples each
    torch.testing.assert_close(plan.sum(1), torch.ones(12), **tol(torch.float32, 3))
    torch.testing.assert_close(plan.sum(0), torch.full((3,), 4.0), atol=0.05, rtol=0)
    assert scores.argmax(1).unique().tolist() == [0]
    assert sorted(plan.argmax(1).unique().tolist()) == [0, 1, 2]


def test_contrastive_loss_prefers_mirrored_similarities():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(8, 16, generator=g)
    mirrored = prompts @ torch.randn(16, 40, generator=g)  # a linear map keeps the similarity structure
    shuffled = mirrored[torch.randperm(8, generator=g)]
    assert contrastive_loss(prompts, mirrored) < contrastive_loss(prompts, shuffled)


def test_training_leaves_the_unet_and_meets_the_average_budget(trained):
    unet, images, labels, result, before = trained
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert len(result.class_codes) == 10 and len(result.losses["resource"]) == 6
    inputs = {"sample": images[:1], "timestep": torch.zeros(1, dtype=torch.long), "class_labels": labels[:1]}
    total = count_macs(unet, inputs)
    models = code_models(unet, result)
    assert set(models) == set(result.class_codes)
    for c, m in models.items():
        assert count_macs(m, inputs) == pytest.approx(result.code_macs[c] * total, rel=1e-9)
    # binarised at the budget: the class average is 0.7 up to the largest unit's MACs share
    largest = max(layer.macs for layer in result.layers) / total
    assert abs(result.average_macs - 0.7) <= largest


def test_routed_sampling_uses_each_class_code_model(trained):
    unet, _, _, result, _ = trained
    models = code_models(unet, result)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    got = routed_sample(models, result.class_codes, labels, steps=3, seed=5)
    for c, m in models.items():
        rows = torch.tensor([i for i, y in enumerate(labels.tolist()) if result.class_codes[y] == c])
        want = ddim_sample(m, labels, steps=3, seed=5)[rows]
        # the same noise and calls; batches of another size may block the convolutions' sums differently
        torch.testing.assert_close(got[rows], want, **tol(torch.float32, 3 * 12 * 144, scale=10.0))


def test_bad_budget_and_labels_are_refused():
    unet = build_unet(TINY, seed=0)
    images, labels = torch.zeros(16, 1, 8, 8), torch.arange(16) % 10
    with pytest.raises(ValueError, match="ask for macs >="):
        train_aptp(unet, images, labels, APTPConfig(macs=0.01, iterations=1, batch_size=8))
    with pytest.raises(ValueError, match="labels must be in"):
        train_aptp(unet, images, labels + 5, APTPConfig(iterations=1, batch_size=8))
