"""PSNR by hand: an exact match, a constant error, clamping, and mismatched shapes refused."""

import pytest
import torch

from prunekit.metrics.image import psnr


def test_psnr_by_hand():
    ref = torch.full((2, 1, 4, 4), 0.5)
    assert psnr(ref.clone(), ref) == float("inf")
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0, abs=1e-4)  # 10·log10(1 / 0.01)
    assert psnr(ref + 0.01, ref, peak=255.0) == pytest.approx(10 * torch.log10(torch.tensor(255.0 ** 2 / 1e-4)).item(),
                                                             rel=1e-5)
    # the output is clamped to [0, peak] before the error: 1.5 counts as 1.0, an error of 0.5 -> 10·log10(4) dB
    assert psnr(torch.full((1, 1, 2, 2), 1.5), torch.full((1, 1, 2, 2), 0.5)) == pytest.approx(6.0206, abs=1e-3)
    with pytest.raises(ValueError, match="one shape"):
        psnr(ref, ref[:1])
