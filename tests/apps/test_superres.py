"""Super-resolution for ISS-P: the pairs by hand, the residual over bicubic, training with a pruner, the refusals."""

import pytest
import torch

from prunekit.apps.superres import TinySR, bicubic, sr_pairs, sr_psnr, train_sr_
from prunekit.train import SoftShrink


def test_pairs_are_block_means_cropped_to_the_scale():
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    lr, hr = sr_pairs(x, 2)
    assert hr.shape == (1, 1, 4, 4) and torch.equal(hr, x[..., :4, :4])
    # top-left block: 0, 1, 5, 6 -> 3; top-right: 2, 3, 7, 8 -> 5; bottom-left: 10, 11, 15, 16 -> 13
    torch.testing.assert_close(lr[0, 0], torch.tensor([[3.0, 5.0], [13.0, 15.0]]))
    for bad, match in (((x, 1), "scale must be"), ((x[0], 2), r"\(N, C, H, W\)"), ((x, 6), "smaller than scale")):
        with pytest.raises(ValueError, match=match):
            sr_pairs(*bad)


def test_a_network_with_a_zero_tail_is_the_bicubic_upscale():
    torch.manual_seed(0)
    model = TinySR(channels=8, blocks=2, scale=2).eval()
    torch.nn.init.zeros_(model.tail.weight)
    torch.nn.init.zeros_(model.tail.bias)
    lr, hr = sr_pairs(torch.rand(3, 1, 12, 12), 2)
    with torch.no_grad():
        out = model(lr)
    torch.testing.assert_close(out.clamp(0, 1), bicubic(lr, 2))
    # a constant image upscales to itself, PSNR against it infinite
    flat = torch.full((2, 1, 6, 6), 0.25)
    assert sr_psnr(model, flat, torch.full((2, 1, 12, 12), 0.25)) == float("inf")
    # PSNR by hand: an error of 0.1 everywhere is 10·log10(1 / 0.01) = 20 dB
    assert sr_psnr(model, flat, torch.full((2, 1, 12, 12), 0.35)) == pytest.approx(20.0, abs=1e-4)


def test_training_with_iss_p_lowers_the_loss_and_ends_at_the_sparsity():
    torch.manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(64, 1, 32, 32), 2)  # smooth-ish 16×16 images
    lr, hr = sr_pairs(images, 2)
    model = TinySR(channels=8, blocks=1, scale=2)
    steps = 2 * (64 // 16)
    iss = SoftShrink(model, 0.8, start_step=0, end_step=steps // 2, every=1, shrink=0.1, schedule="constant")
    calls = []
    losses = train_sr_(model, lr, hr, epochs=2, lr=3e-3, batch_size=16, seed=0,
                       after_step=lambda: (calls.append(1), iss.step()))
    assert len(losses) == len(calls) == steps
    assert sum(losses[-2:]) < sum(losses[:2])
    for t in iss.targets:  # pruned for real at end_step: masked and zero from then on
        w = getattr(t.module, t.param).detach()
        assert (w == 0).float().mean().item() == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ValueError, match="lr_images × scale"):
        train_sr_(model, lr, lr, epochs=1, batch_size=16)
    with pytest.raises(ValueError, match="one length"):
        train_sr_(model, lr, hr[:10], epochs=1, batch_size=16)
    for bad in (dict(scale=2.5), dict(scale=1), dict(channels=0)):
        with pytest.raises(ValueError, match="TinySR needs integers"):
            TinySR(**bad)
