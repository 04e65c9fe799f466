import pytest
import torch

from prunekit.core.mask import get_mask
from prunekit.models.reference import MLP
from prunekit.train import SoftShrink


def test_soft_shrink_scales_the_smallest_weights_then_prunes():
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))
    w0 = model.body[0].weight.detach().clone()
    iss = SoftShrink(model, 0.5, start_step=0, end_step=4, every=2, shrink=0.25, schedule="linear")
    iss.step()
    assert torch.equal(model.body[0].weight.detach(), w0)
    iss.step()  # step 2: target 0.25, the lowest quarter of each layer shrinks by 25 %
    w = model.body[0].weight.detach()
    changed = w != w0
    assert changed.float().mean().item() == pytest.approx(0.25, abs=1e-3)
    assert torch.allclose(w[changed], 0.75 * w0[changed])
    assert float(w0[changed].abs().max()) <= float(w0[~changed].abs().min())
    assert get_mask(model.body[0]) is None
    iss.step(); iss.step()  # step 4: hard pruning to 0.5
    assert 1 - get_mask(model.body[0]).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    assert [h["step"] for h in iss.history] == [2, 4]


def test_bad_shrink():
    with pytest.raises(ValueError, match="shrink must be in"):
        SoftShrink(MLP(), 0.5, shrink=1.5)
    with pytest.raises(ValueError, match="end_step"):
        SoftShrink(MLP(), 0.5, start_step=5, end_step=5)


def test_constant_schedule_with_shrink_one_is_iterative_hard_thresholding():
    """The paper's baseline: the final sparsity from step 1, the smallest weights zeroed (no mask) at every step, so a
    zeroed weight that grows back (as a gradient step would make it) is kept and another one is zeroed."""
    torch.manual_seed(0)
    model = MLP(hidden=(16,))
    layer = model.body[0]
    iht = SoftShrink(model, 0.5, start_step=0, end_step=3, every=1, shrink=1.0, schedule="constant")
    iht.step()  # step 1: already the final 50 %
    w = layer.weight.detach()
    zero = w == 0
    assert zero.float().mean().item() == pytest.approx(0.5, abs=1e-3) and get_mask(layer) is None
    i = int(zero.flatten().nonzero()[0])
    with torch.no_grad():
        layer.weight.view(-1)[i] = 10.0  # grown back, far above every kept weight
    iht.step()  # step 2: re-chosen from the magnitudes now
    w = layer.weight.detach()
    assert float(w.view(-1)[i]) == 10.0
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    assert [h["target"] for h in iht.history] == [0.5, 0.5]
