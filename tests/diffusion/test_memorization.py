"""Memorization: copies are counted against a stated threshold, the units memorized prompts over-activate
are located by their z-scores, and forget_ deletes them physically."""

from __future__ import annotations

import pytest
import torch

from prunekit.diffusion.memorization import (copy_threshold, duplicated_subset, forget_, locate,
                                             memorization_rate, nearest, overlap, unit_activations)
from prunekit.diffusion.model import UNetConfig, build_unet
from prunekit.diffusion.units import find_unit_layers

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


def test_copies_are_counted_below_the_threshold():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.1, 0.0], [5.0, 0.0], [10.0, 0.3]])
    d, idx = nearest(samples, train)
    torch.testing.assert_close(d, torch.tensor([0.1, 5.0, 0.3]))
    assert idx.tolist() == [0, 0, 1]  # a tie at 5.0 goes to the first training row
    assert memorization_rate(samples, train, threshold=0.5) == pytest.approx(2 / 3)
    test = torch.tensor([[float(i), 1.0] for i in range(101)])  # distances 1 .. sqrt(26)
    assert copy_threshold(test, train, quantile=0.01) == pytest.approx(1.0)


def test_duplicated_subset_repeats_only_the_memorized_classes():
    images = torch.arange(60.0).view(60, 1, 1, 1)
    labels = torch.arange(60) % 3
    x, y, ux, uy = duplicated_subset(images, labels, [1], per_memorized=2, copies=5, per_other=4)
    assert (y == 1).sum() == 10 and (y == 0).sum() == 4 and (y == 2).sum() == 4
    assert len(ux) == 2 + 4 + 4 and len(x[y == 1].unique()) == 2


def test_locate_finds_the_over_activated_units():
    layers = find_unit_layers(build_unet(TINY, seed=0))
    n = sum(layer.units for layer in layers)
    g = torch.Generator().manual_seed(0)
    others = torch.rand((40, n), generator=g)
    memorized = torch.rand((10, n), generator=g)
    memorized[:, [3, 17]] += 5.0
    found = locate(memorized, others, layers, fraction=0.1, min_z=3.0)
    assert found.selected.nonzero().flatten().tolist() == [3, 17]
    again = locate(memorized[:5], others, layers, fraction=0.1, min_z=3.0)
    iou, chance = overlap(found, again)
    assert iou == 1.0 and chance == pytest.approx((2 * 2 / n) / (4 - 2 * 2 / n))


def test_activations_and_forget(tmp_path):
    unet = build_unet(TINY, seed=0).eval()
    layers = find_unit_layers(unet)
    acts = unit_activations(unet, torch.tensor([0, 1, 2]), steps=2, seed=0, layers=layers)
    assert acts.shape == (3, sum(layer.units for layer in layers)) and (acts >= 0).all()
    torch.testing.assert_close(acts, unit_activations(unet, torch.tensor([0, 1, 2]), steps=2, seed=0))
    selected = torch.zeros(acts.shape[1], dtype=torch.bool)
    selected[:4] = True  # every unit of the first layer, and nothing else
    selected[5] = True
    from prunekit.diffusion.memorization import Located

    report = forget_(unet, Located(layers, torch.arange(float(acts.shape[1])), selected, 0.0))
    assert report.located == 5 and report.removed == 4 and report.kept_back == 1
    assert [m.units for m in find_unit_layers(unet)][:2] == [1, 3]
    with pytest.raises(ValueError, match="another layout"):
        forget_(unet, Located(layers, torch.zeros(len(selected)), selected, 0.0))


def test_activations_refuse_labels_the_unet_has_no_embedding_for():
    unet = build_unet(TINY, seed=0).eval()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\) for this UNet, got \[3, 12\]"):
        unit_activations(unet, torch.tensor([3, 12]), steps=1)  # used to be an IndexError inside the embedding


def test_standardized_pixels_distance_is_sqrt_two_one_minus_correlation():
    from prunekit.diffusion.memorization import nearest, standardized_pixels

    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 3.0], [2.0, 4.0]]]])
    # hand: centred a = (-1.5, -0.5, 0.5, 1.5), b = (-1.5, 0.5, -0.5, 1.5); r = (2.25 - 0.25 - 0.25 + 2.25) / 5 = 0.8
    d, idx = nearest(standardized_pixels(b), standardized_pixels(a))
    assert abs(float(d[0]) - (2 * (1 - 0.8)) ** 0.5) < 1e-6 and int(idx[0]) == 0
    same, _ = nearest(standardized_pixels(0.5 * a - 0.3), standardized_pixels(a))  # brightness and contrast
    assert float(same[0]) < 1e-6
