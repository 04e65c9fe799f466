"""EcoDiff: gradients reach every mask through the whole DDIM trajectory (with and without time-step
checkpointing), the UNet is left as it was while masks are learned, and ecodiff_ removes the asked share of
parameters physically."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.diffusion.ecodiff import (EcoDiffConfig, ddim_timesteps, ecodiff_, gate, learn_masks, objective,
                                        trajectory)
from prunekit.diffusion.model import UNetConfig, build_unet
from prunekit.diffusion.units import find_unit_layers, masked
from tests.tolerances import tol

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


@pytest.fixture
def unet():
    return build_unet(TINY, seed=0).eval()


def _grads(unet, checkpoint):
    cfg = EcoDiffConfig(steps=3, checkpoint=checkpoint, init_logit=0.5, mask="sigmoid")
    layers = find_unit_layers(unet)
    sched = ddim_timesteps(unet, cfg.steps)
    g = torch.Generator().manual_seed(0)
    noise, labels = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([2, 7])
    with torch.no_grad():
        target = trajectory(unet, noise, labels, sched)
    logits = [torch.full((layer.units,), 0.5, requires_grad=True) for layer in layers]
    weights = [torch.full((layer.units,), 1e-3) for layer in layers]
    current = [gate(lg, cfg.mask, sample=False) for lg in logits]
    for p in unet.parameters():
        p.requires_grad_(False)
    with masked(unet, layers, lambda: current):
        mse, l0 = objective(unet, noise, labels, sched, target, logits, weights, cfg)
        mse.backward()  # inside the block: checkpointing recomputes each step with the masks in place
    return [lg.grad for lg in logits], mse.item()


def test_mask_gradients_flow_through_the_trajectory(unet):
    grads, mse = _grads(unet, checkpoint=True)
    assert mse > 0  # masks at sigmoid(0.5) = 0.62 change the trajectory
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    plain, _ = _grads(copy.deepcopy(unet), checkpoint=False)
    # checkpointing recomputes the same forward: the same gradients up to the order of accumulation
    for a, b in zip(grads, plain):
        torch.testing.assert_close(a, b, **tol(torch.float32, 3 * 12 * 144, scale=float(b.abs().max()) + 1e-12))


def test_trajectory_is_ddim_sample(unet):
    from prunekit.diffusion.ddpm import ddim_sample

    labels = torch.tensor([0, 4, 9])
    want = ddim_sample(unet, labels, steps=4, seed=3)
    noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = trajectory(unet, noise, labels, ddim_timesteps(unet, 4))
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same calls in the same order


def test_learning_leaves_the_unet_as_it_was(unet):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.train()
    masks = learn_masks(unet, EcoDiffConfig(steps=2, iterations=3, batch_size=2, lr=0.5))
    assert unet.training and all(p.requires_grad for p in unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert len(masks.mse) == 3 and any(not torch.equal(lg, torch.full_like(lg, 3.0)) for lg in masks.logits)


def test_ecodiff_removes_the_asked_parameters(unet):
    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([10, 900]), torch.tensor([1, 2])
    report = ecodiff_(unet, EcoDiffConfig(sparsity=0.2, steps=2, iterations=4, batch_size=2))
    n = sum(p.numel() for p in unet.parameters())
    assert n == report.params_after < report.params_before
    assert report.params_removed >= 0.2
    # no more than one further unit's parameters beyond the target (the largest unit here: 1,872)
    assert report.params_before - n < 0.2 * report.params_before + 1872
    with torch.no_grad():
        assert torch.isfinite(unet(x, t, class_labels=y).sample).all()


def test_bad_input_is_refused_before_anything_changes(unet):
    before = sum(p.numel() for p in unet.parameters())
    with pytest.raises(ValueError, match="ask for at most"):
        ecodiff_(unet, EcoDiffConfig(sparsity=0.95, steps=2, iterations=1))
    with pytest.raises(ValueError, match="timesteps this model was trained"):
        ecodiff_(unet, EcoDiffConfig(steps=5000, iterations=1))
    with pytest.raises(ValueError, match="sparsity"):
        EcoDiffConfig(sparsity=1.2)
    assert sum(p.numel() for p in unet.parameters()) == before
