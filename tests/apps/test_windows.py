"""Adaptive window pruning: windows, blur, the pruned pass against the full one, MACs, training."""

import pytest
import torch

from prunekit.apps.windows import (WindowRestorer, evaluate, from_windows, local_blur_set, motion_blur, psnr,
                                   to_windows, train_restorer_, window_labels)
from prunekit.metrics.macs import count_macs


def test_windows_round_trip_and_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    t = to_windows(x, 2)
    assert t.shape == (2 * 2 * 3, 4, 3)
    torch.testing.assert_close(t[1, :, 0], x[0, 0, 0:2, 2:4].flatten())  # second window: rows 0-1, cols 2-3
    assert torch.equal(from_windows(t, 2, 4, 6, 2), x)
    with pytest.raises(ValueError, match="multiple of the window"):
        to_windows(x, 5)


def test_motion_blur_and_labels_by_hand():
    x = torch.zeros(1, 1, 1, 5)
    x[0, 0, 0, 2] = 3.0
    torch.testing.assert_close(motion_blur(x, 3)[0, 0, 0], torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 3] = True  # one pixel in the top-right window of 2×2 windows
    assert window_labels(mask, 2).tolist() == [[False, True, False, False]]
    b, s, m = local_blur_set(torch.rand(3, 1, 14, 14), length=3, size=(4, 6), seed=0)
    # the mask marks the pixels the blur changed by more than 0.02, all inside one rectangle of 4..6 a side
    assert float((b - s)[~m].abs().max()) <= 0.02 and bool(((b - s)[m].abs() > 0.02).all())
    assert 0 < int(m.sum()) <= 3 * 36


def test_pruned_pass_matches_full_pass_on_kept_windows_and_skips_the_rest():
    torch.manual_seed(0)
    model = WindowRestorer(dim=8, window=7, depth=1, heads=2).eval()
    torch.nn.init.normal_(model.out.weight)  # the output convolution starts at zero (identity): give it weights
    x = torch.rand(2, 1, 14, 14)
    full = model(x)
    all_kept = model(x, keep=torch.ones(2, 4, dtype=torch.bool))
    # the same windows through the same blocks, gathered: equal up to float32 rounding of the matmuls
    torch.testing.assert_close(all_kept, full, rtol=1e-5, atol=1e-6)
    keep = torch.tensor([[True, False, False, False], [False, False, False, True]])
    part = model(x, keep=keep)
    # the 3×3 output convolution reads one pixel into the neighbouring (skipped) windows: compare inside
    torch.testing.assert_close(part[0, :, :6, :6], full[0, :, :6, :6], rtol=1e-5, atol=1e-6)
    assert torch.equal(part[0, :, 7:, :], x[0, :, 7:, :]) and torch.equal(part[1, :, :7, :], x[1, :, :7, :])
    assert torch.equal(model(x, keep=torch.zeros(2, 4, dtype=torch.bool)), x)


def test_macs_fall_with_the_windows_kept():
    model = WindowRestorer(dim=8, window=7, depth=2, heads=2).eval()
    x = torch.rand(1, 1, 14, 14)

    class Keep(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return model(x, keep=self.k)

    full = count_macs(model, x)
    one = count_macs(Keep(torch.tensor([[True, False, False, False]])), x)
    convs = 196 * 8 * 9 * 2  # embed and out convolutions run on every pixel
    # a block on 49 tokens of dim 8: qkv 49·8·24, scores+values 2·49·49·8, proj 49·8·8, MLP 2·49·8·16
    block = 49 * 8 * 24 + 2 * 49 * 49 * 8 + 49 * 8 * 8 + 2 * 49 * 8 * 16
    assert full == convs + 2 * 4 * block
    assert one == convs + 2 * 1 * block


@pytest.mark.slow
def test_training_learns_to_find_blurry_windows():
    torch.manual_seed(0)
    # vertical stripes (period 2): a horizontal blur turns them grey, which the predictor must learn to see
    imgs = torch.zeros(32, 1, 14, 14)
    imgs[..., ::2] = 1.0
    imgs = imgs * torch.rand(32, 1, 1, 1)
    b, s, m = local_blur_set(imgs, length=5, size=(5, 7), seed=0)
    model = WindowRestorer(dim=8, window=7, depth=1, heads=2)
    start = evaluate(model, b, s, m)
    assert start.psnr_full == start.psnr_blurred  # the output convolution starts at zero: the identity
    losses = train_restorer_(model, b, s, m, epochs=25, lr=1e-3, batch_size=8)
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])
    f = evaluate(model, b, s, m)
    assert f.predictor_accuracy > 0.85 and 0.0 < f.kept < 1.0 and f.macs_pruned < f.macs_full
    assert psnr(s, s) == float("inf")
