"""LAPP (learnable per-layer thresholds, soft masks, 1×1 bypasses, a MACs constraint): the mask and the expected
MACs by hand, the bypass folded exactly, finalize_ equal to the hard-masked model, and a short training that
reaches its MACs target."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.metrics.macs import count_macs
from prunekit.models import ResNetStyle, SmallCNN
from prunekit.train import fit
from prunekit.train.lapp import LAPP, LAPPConfig, _Bypassed

X = torch.randn(2, 1, 28, 28)


def _cnn(seed=0):
    torch.manual_seed(seed)
    m = SmallCNN((4, 8, 8))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.2, 2.0)
                mod.bias.normal_(0, 0.1)
    return m.eval()


def test_soft_mask_and_expected_macs_by_hand():
    m = _cnn()
    lapp = LAPP(m, X, LAPPConfig(temperature=0.5, temperature_start=0.5, bypass=False))
    assert [b for _, b in lapp.pairs] == ["features.1", "features.5", "features.9"]
    with torch.no_grad():
        lapp.thresholds[1].fill_(0.5)  # half of the 8 channels above the threshold
    g = m.features[5].weight.detach().abs()
    rank = torch.argsort(torch.argsort(g, descending=True))
    q = (rank.float() + 0.5) / 8
    torch.testing.assert_close(lapp.quantiles(1), q)
    torch.testing.assert_close(lapp.soft_mask(1), torch.sigmoid((0.5 - q) / 0.5))
    k = [float(lapp.soft_mask(i).mean().detach()) for i in range(3)]
    # conv1: 28·28·4 outputs × 1 input × 9; conv2: 14·14·8 × 4 × 9; conv3: 7·7·8 × 8 × 9
    macs = [28 * 28 * 4 * 9, 14 * 14 * 8 * 4 * 9, 7 * 7 * 8 * 8 * 9]
    assert lapp.macs0 == macs
    want = (macs[0] * k[0] + macs[1] * k[1] * k[0] + macs[2] * k[2] * k[1]) / sum(macs)
    assert float(lapp.expected_macs()) == pytest.approx(want, rel=1e-6)
    assert float(lapp.penalty()) == 0.0 or want > 1  # before the ramp starts only MACs above 1 would cost
    lapp.progress = 0.25  # ramp 0.5: halfway from 1 to 0.5
    assert lapp.target() == pytest.approx(0.75)
    assert float(lapp.penalty()) == pytest.approx(2 * (want - 0.75) ** 2, rel=1e-6)  # both sides cost now


def test_the_bypass_folds_into_the_centre_tap_exactly():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    b = _Bypassed(conv)
    with torch.no_grad():
        b.bypass.weight.normal_()
    x = torch.randn(2, 3, 9, 9)
    want = b(x)
    torch.testing.assert_close(b.folded()(x), want, rtol=1e-5, atol=1e-5)


def test_finalize_removes_the_masked_channels_and_computes_what_the_hard_masks_did():
    m = _cnn()
    lapp = LAPP(m, X, LAPPConfig())
    with torch.no_grad():
        for i, r in enumerate((0.75, 0.5, 0.25)):
            lapp.model.get_submodule(lapp.pairs[i][0]).bypass.weight.normal_(0, 0.1)
            lapp.thresholds[i].fill_(r)
    hard = []
    for i, n in enumerate((3, 4, 2)):  # round(r · C) of 4, 8, 8 channels, the largest |γ|
        k = torch.zeros(len(lapp.scores(i)))
        k[torch.argsort(lapp.scores(i), descending=True)[:n]] = 1
        hard.append(k)
    for i in range(3):  # the forward with hard masks: the soft masks' limit τ → 0
        lapp._hooks[i].remove()
        lapp._hooks[i] = lapp.model.get_submodule(lapp.pairs[i][1]).register_forward_hook(
            lambda mod, a, out, k=hard[i]: out * k.view(1, -1, 1, 1))
    want = m(X)
    rep = lapp.finalize_()
    assert rep.channels_after == {"features.1": 3, "features.5": 4, "features.9": 2}
    assert rep.channels_before == {"features.1": 4, "features.5": 8, "features.9": 8}
    assert not any(isinstance(mod, _Bypassed) for mod in m.modules()) and not hasattr(m, "lapp_thresholds")
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [3, 4, 2]
    torch.testing.assert_close(m(X), want, rtol=1e-4, atol=1e-4)
    assert rep.macs_after == count_macs(m, X) < rep.macs_before


def test_a_short_training_reaches_its_macs_target():
    torch.manual_seed(0)
    x = torch.randn(256, 1, 28, 28)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :14].mean((1, 2, 3)) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    m = SmallCNN((8, 16, 16))
    lapp = LAPP(m, x[:2], LAPPConfig(macs_kept=0.4, ramp=0.5))
    steps = 6 * (256 // 32)
    fit(m, data, epochs=6, lr=0.05, batch_size=32, progress=False, batch_loss=lapp.batch_loss(F.cross_entropy),
        on_step=lapp.on_step(steps))
    assert lapp.target() == pytest.approx(0.4)
    assert float(lapp.expected_macs()) < 0.5
    rep = lapp.finalize_()
    assert rep.macs_after / rep.macs_before < 0.55
    kept = [rep.channels_after[k] / rep.channels_before[k] for k in rep.channels_after]
    assert max(kept) - min(kept) > 0.05  # the layers found rates of their own, not one uniform rate
    assert math.isfinite(float(m(x[:4]).sum()))


def test_residual_networks_and_models_without_masks_are_refused():
    with pytest.raises(ValueError, match="residual blocks"):
        LAPP(ResNetStyle((4, 8, 8)), X)
    with pytest.raises(ValueError, match="no convolution followed by a BatchNorm"):
        LAPP(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()), X)
    with pytest.raises(ValueError):
        LAPPConfig(macs_kept=1.0)
