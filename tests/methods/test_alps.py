import copy

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.methods.alps import ALPSConfig, alps_prune
from prunekit.methods.base import METHODS
from prunekit.methods.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from prunekit.models.hf import tiny_model


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(64, 64, generator=g) * 0.3 + torch.eye(64)
    x = torch.randn(512, 64, generator=g) @ mix * torch.linspace(0.2, 3, 64)
    return x, torch.randn(48, 64, generator=g)


def _err(x, w, w2):
    return float(((x @ (w - w2).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum())


@pytest.mark.parametrize("sparsity, n, m", [(0.5, 0, 0), (0.7, 0, 0), (0.5, 2, 4)])
def test_alps_reconstructs_better_than_sparsegpt_at_the_same_sparsity(sparsity, n, m):
    x, w = _problem()
    h = x.t() @ x
    new_w, keep = alps_prune(w, h, sparsity, n, m, max_iter=60)
    hinv, dead = inverse_hessian_factor(h, 0.01)
    sg_w, sg_keep = sparsegpt_prune(w, hinv, dead, sparsity, n, m)
    assert int((~keep).sum()) == int((~sg_keep).sum())  # same count of zeros
    assert bool((new_w[~keep] == 0).all())
    if m:
        assert bool((keep.reshape(48, -1, m).sum(-1) == n).all())
    assert _err(x, w, new_w) < 0.8 * _err(x, w, sg_w)


def test_alps_keeps_pruned_entries_pruned_and_prunes_a_model():
    x, w = _problem(1)
    alive = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    _, keep = alps_prune(w, x.t() @ x, 0.6, keep=alive, max_iter=30)
    assert not bool((keep & ~alive).any())
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    for seq in ("block", "layer"):
        m = copy.deepcopy(model)
        r = pk.prune_(m, "alps", 0.6, calibration=ids, max_iter=20, sequential=seq, progress=False)
        assert r.sparsity == pytest.approx(0.6, abs=1e-3)
        assert torch.isfinite(m(ids).logits).all() and not torch.allclose(m(ids).logits, ref)
        assert get_mask(m.model.layers[0].mlp.down_proj) is not None


def test_alps_config_and_bad_options():
    cfg = METHODS.parse_config({"method": "alps", "sparsity": 0.7, "max_iter": 50})
    assert isinstance(cfg, ALPSConfig) and ALPSConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="rho"):
        pk.prune_(tiny_model("llama"), "alps", 0.5, calibration=torch.zeros(2, 8, dtype=torch.long), rho=-1.0)
