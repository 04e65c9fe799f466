import copy

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.core.pattern import parse_pattern, pattern_holds
from prunekit.methods.base import METHODS
from prunekit.methods.dsnot import DSnoTConfig, dsnot_refine
from prunekit.models.hf import tiny_model


def _layer(seed=0):
    """A layer whose inputs have non-zero means (where a mask's expected output drift matters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 64, generator=g) + torch.linspace(-1.5, 2.0, 64)
    return x, torch.randn(48, 64, generator=g)


def _wanda_mask(w, x, sparsity):
    score = w.abs() * x.norm(dim=0)
    k = round(sparsity * w.shape[1])
    keep = torch.ones_like(w, dtype=torch.bool)
    keep.scatter_(1, score.argsort(dim=1)[:, :k], False)
    return keep, score


def _wanda_nm(w, x, n, m):
    score = w.abs() * x.norm(dim=0)
    groups = score.reshape(w.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(w.shape), score


def _err(x, w, keep):
    return float(((x @ (w * ~keep).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum())


@pytest.mark.parametrize("sparsity", [0.6, 0.7])
def test_dsnot_lowers_the_drift_and_the_reconstruction_error_of_wandas_mask(sparsity):
    x, w = _layer()
    keep0, score = _wanda_mask(w, x, sparsity)
    keep, swaps = dsnot_refine(w, keep0, score, x.mean(0), x.var(0, unbiased=False), update_threshold=1e-3)
    assert swaps > 0
    assert torch.equal(keep.sum(1), keep0.sum(1))  # every row keeps its count of zeros
    drift0 = ((w * ~keep0) @ x.mean(0)).abs()
    drift = ((w * ~keep) @ x.mean(0)).abs()
    assert float(drift.mean()) < 0.5 * float(drift0.mean())
    assert bool((drift <= drift0 + 1e-5).all())  # no row drifts further than it started
    assert _err(x, w, keep) < 0.9 * _err(x, w, keep0)


def test_dsnot_keeps_n_m_groups_and_frozen_entries():
    x, w = _layer(1)
    keep0, score = _wanda_nm(w, x, 2, 4)
    frozen = torch.zeros_like(keep0)
    frozen[:, :4] = ~keep0[:, :4]
    keep, swaps = dsnot_refine(w, keep0, score, x.mean(0), x.var(0, unbiased=False), m=4, frozen=frozen,
                               update_threshold=1e-3)
    assert swaps > 0 and pattern_holds(keep, parse_pattern("2:4"))
    assert not bool((keep & frozen).any())
    assert _err(x, w, keep) < _err(x, w, keep0)


def test_dsnot_prunes_a_model_at_the_initial_masks_sparsity_and_skips_mlps_by_default():
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    wanda, dsnot, everything = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    rw = pk.prune_(wanda, "wanda", 0.6, calibration=ids, progress=False)
    rd = pk.prune_(dsnot, "dsnot", 0.6, calibration=ids, progress=False, update_threshold=0.0)
    pk.prune_(everything, "dsnot", 0.6, calibration=ids, progress=False, skip=[], update_threshold=0.0)
    assert rd.sparsity == pytest.approx(rw.sparsity)
    mlp = "model.layers.0.mlp.up_proj"
    attn = "model.layers.0.self_attn.q_proj"
    mods = lambda m: dict(m.named_modules())  # noqa: E731
    assert torch.equal(get_mask(mods(dsnot)[mlp]), get_mask(mods(wanda)[mlp]))  # skipped: Wanda's mask
    assert not torch.equal(get_mask(mods(dsnot)[attn]), get_mask(mods(wanda)[attn]))  # refined
    assert not torch.equal(get_mask(mods(everything)[mlp]), get_mask(mods(wanda)[mlp]))
    assert torch.isfinite(dsnot(ids).logits).all()


def test_dsnot_config_round_trips_and_refuses_bad_values():
    cfg = METHODS.parse_config({"method": "dsnot", "sparsity": 0.6, "initial": "ria", "skip": []})
    assert isinstance(cfg, DSnoTConfig) and DSnoTConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="initial"):
        METHODS.parse_config({"method": "dsnot", "sparsity": 0.6, "initial": "sparsegpt"})
    with pytest.raises(ValueError, match="row"):
        pk.prune_(tiny_model("llama"), "dsnot", 0.5, pattern="row", calibration=torch.zeros(2, 8, dtype=torch.long))
