import pytest
import torch

from prunekit.core.mask import get_mask
from prunekit.train import Gradual, fit


def _layer_sparsity(m):
    return 1 - get_mask(m).float().mean().item()


def test_gradual_follows_the_cubic_schedule(mlp, digits_train):
    g = Gradual(mlp, sparsity=0.8, start_step=2, end_step=12, every=2, keep_masks=True)
    fit(mlp, digits_train, epochs=2, progress=False, on_step=lambda s: g.step())
    assert [h["step"] for h in g.history] == [2, 4, 6, 8, 10, 12]
    for h in g.history:
        want = 0.8 * (1 - (1 - (h["step"] - 2) / 10) ** 3)
        assert h["target"] == pytest.approx(want)
        assert h["sparsity"] == pytest.approx(want, abs=1e-3)
    assert g.sparsity == pytest.approx(0.8, abs=1e-3)
    # masks only gain zeros, and the history keeps one mask set per event
    assert len(g.mask_history) == 6
    a, b = g.mask_history[2]["body.2"], g.mask_history[3]["body.2"]
    assert bool((b <= a).all()) and int(b.sum()) < int(a.sum())
    # pruned weights stay pruned through training (the masked weight is what forward sees)
    assert float(mlp.body[2].weight.detach()[~get_mask(mlp.body[2])].abs().sum()) == 0.0


def test_gradual_with_global_allocation_and_linear_schedule(mlp):
    g = Gradual(mlp, sparsity=0.5, start_step=0, end_step=4, every=1, schedule="linear", allocation="global")
    for _ in range(2):
        g.step()
    assert g.sparsity == pytest.approx(0.25, abs=1e-3)


def test_bad_input_is_rejected_before_any_change(mlp):
    with pytest.raises(ValueError, match="end_step"):
        Gradual(mlp, sparsity=0.5, start_step=10, end_step=5)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\), got 1.0"):
        Gradual(mlp, sparsity=1.0)
    with pytest.raises(ValueError, match="sparsity must be"):
        Gradual(mlp, sparsity=-0.1)
    with pytest.raises(ValueError, match="fixes the sparsity"):
        Gradual(mlp, sparsity=0.5, pattern="2:4")
    with pytest.raises(ValueError, match="no prunable tensor"):
        Gradual(torch.nn.Sequential(torch.nn.ReLU()), sparsity=0.5)
    assert get_mask(mlp.body[0]) is None


def test_checkpoint_and_resume_gives_the_same_result(digits_train):
    from prunekit.models.reference import MLP

    def make():
        torch.manual_seed(0)
        return MLP(hidden=(64, 32))

    a = make()
    ga = Gradual(a, sparsity=0.7, start_step=0, end_step=10, every=1)
    for _ in range(10):
        ga.step()
    b = make()
    gb = Gradual(b, sparsity=0.7, start_step=0, end_step=10, every=1)
    for _ in range(4):
        gb.step()
    state = gb.state_dict()
    c = make()
    gc = Gradual(c, sparsity=0.7, start_step=0, end_step=10, every=1)
    gc.load_state_dict(state)
    assert gc.step_count == 4 and len(gc.history) == 4
    for _ in range(6):
        gc.step()
    assert torch.equal(get_mask(c.body[2]), get_mask(a.body[2]))
    assert [h["target"] for h in gc.history] == [h["target"] for h in ga.history]
    with pytest.raises(ValueError, match="same settings"):
        Gradual(make(), sparsity=0.6, start_step=0, end_step=10, every=1).load_state_dict(state)
