from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.diffusion.metrics import (FeatureNet, balanced_labels, features, frechet_distance, grid_pixels,
                                        kernel_distance, macs_per_step, precision_recall, real_reference,
                                        sample_quality, sampling_time, save_grid, unet_cost)


def test_frechet_distance_of_a_shift_is_its_squared_length():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    shift = np.linspace(-1, 1, 16)
    # equal covariances: the trace terms cancel, leaving |shift|²; float64 eigen-decompositions of 16×16 matrices
    # agree to ~1e-10 relative
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-8
    b = rng.normal(scale=2.0, size=(400, 16))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    assert frechet_distance(a, b) > 5


def test_kid_and_precision_recall_separate_equal_from_different_sets():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    far = rng.normal(loc=3.0, size=(300, 8))
    kid_same, _ = kernel_distance(a, b, subsets=5, subset_size=200)
    kid_far, _ = kernel_distance(a, far, subsets=5, subset_size=200)
    assert abs(kid_same) < 0.05 < kid_far
    assert precision_recall(a, a) == (1.0, 1.0)
    p, r = precision_recall(a, far)
    assert p < 0.1 and r < 0.1


def test_png_grid_has_one_row_per_class(tmp_path):
    images = torch.linspace(-1, 1, 20).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    px = grid_pixels(images, rows=10, pad=1)
    assert px.shape == (10 * 5 + 1, 2 * 5 + 1)
    assert px[1, 1] == 0 and px[-2, -2] == 255  # first image black (-1), last white (+1)
    path = save_grid(images, tmp_path / "g.png")
    from PIL import Image

    with Image.open(path) as im:
        want = grid_pixels(images, rows=10)  # save_grid's default padding
        assert im.size == (want.shape[1], want.shape[0]) and im.mode == "L"
        assert np.array_equal(np.asarray(im), want)


def test_cost_and_quality_of_the_tiny_model(tiny_ddpm):
    unet, _ = tiny_ddpm
    cost = unet_cost(unet)
    assert cost["params"] == sum(p.numel() for p in unet.parameters()) and cost["macs_per_step"] > 1e6
    torch.manual_seed(0)
    net = FeatureNet().eval()  # untrained features: enough to test the bookkeeping, not the values
    ref = real_reference(net, 20)
    q = sample_quality(unet, n=20, steps=2, classifier=net, reference=ref)
    assert q.n == 20 and q.fid > 0 and q.fid_floor > 0 and 0 <= q.precision <= 1 and 0 <= q.class_accuracy <= 1
    assert q.fid_floor == ref.floors["fid"]
    assert balanced_labels(20).tolist() == list(range(10)) * 2
    with pytest.raises(ValueError, match="n must be in"):
        real_reference(net, 6000)


def test_sampling_time_is_paired(tiny_ddpm):
    unet, _ = tiny_ddpm
    cmp = sampling_time({"a": unet, "b": unet}, n=2, steps=1, budget_s=2, min_rounds=3)
    assert cmp.rounds >= 3 and len(cmp.ratio("b", "a").values) == cmp.rounds


@pytest.mark.parametrize("shape", [dict(sample_size=16), dict(num_classes=3)])
def test_fid_fmnist_refuses_a_unet_of_another_image_shape(shape):
    from prunekit.diffusion import UNetConfig, build_unet
    from prunekit.diffusion.metrics import sample_quality

    unet = build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4, **shape), seed=0)
    # used to measure 16-pixel (or 3-class) samples against the 32-pixel, 10-class test set without a word
    with pytest.raises(ValueError, match="FID-FMNIST compares 1x32x32 samples of the 10 Fashion-MNIST classes"):
        sample_quality(unet, n=20, steps=1, classifier=object())


def test_precision_recall_in_chunks_matches_the_brute_force_balls():
    """The k-NN radii and ball tests run in row chunks (5,000 samples once asked for a 23.8 GiB tensor); every
    chunk size gives the brute-force answer."""
    import numpy as np

    from prunekit.diffusion.metrics import _inside, _knn_radius

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(130, 8)), rng.normal(size=(110, 8)) + 0.4
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    ref = np.sort(d, 1)[:, 3]
    for chunk in (7, 64, 1000):
        assert np.allclose(_knn_radius(a, 3, chunk=chunk), ref, atol=1e-9)
        inside = (np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1)) <= ref[None]).any(1)
        assert (_inside(b, a, ref, chunk=chunk) == inside).all()
    assert 0.0 < float(inside.mean()) < 1.0  # the case separates something
