import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask, masked_modules, remove_mask_
from prunekit.core.pattern import parse_pattern, pattern_holds
from prunekit.methods.base import METHODS
from prunekit.methods.ria import RIAConfig, nm_permutation, nm_retained, ria_scores
from prunekit.models.hf import tiny_model

from tests.tolerances import tol


def test_ria_score_is_relative_importance_times_the_activation_norm_to_the_power_a():
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0]])
    norms = torch.tensor([4.0, 1.0, 9.0])
    got = ria_scores(w, norms, 0.5)
    # row sums 3, 5; column sums 4, 3, 1
    want = torch.tensor([[1 / 3 + 1 / 4, 2 / 3 + 2 / 3, 0.0], [3 / 5 + 3 / 4, 1 / 5 + 1 / 3, 1 / 5 + 1 / 1]])
    want = want * torch.tensor([2.0, 1.0, 3.0])
    assert torch.allclose(got, want)
    keep = torch.tensor([[True, False, True], [True, True, True]])
    masked = ria_scores(w, norms, 0.5, keep)
    assert masked[0, 1] == float("-inf") and masked[0, 0] == pytest.approx((1 / 1 + 1 / 4) * 2)


def _clustered_scores(seed=0):
    """Scores whose important input channels sit next to each other: the identity order wastes a 2:4 mask."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(32, 64, generator=g)
    base[:, :32] *= 10  # the first 32 channels matter, and fill whole groups of 4
    return base


def test_channel_permutation_keeps_more_score_than_the_identity_and_the_heuristic_alone():
    s = _clustered_scores()
    perm = nm_permutation(s, 2, 4)
    assert sorted(perm.tolist()) == list(range(64))
    identity = nm_retained(s, 2, 4)
    heuristic = nm_retained(s[:, nm_permutation(s, 2, 4, rounds=0)], 2, 4)
    permuted = nm_retained(s[:, perm], 2, 4)
    # the identity keeps 2 of the 4 important channels of a group; mixing two with two keeps all of them
    assert permuted > 1.25 * identity
    assert permuted >= heuristic
    # the upper bound: every row keeps its 32 best entries
    bound = float(s.topk(32, dim=1).values.sum())
    assert permuted > 0.97 * bound


def test_channel_permutation_never_does_worse_than_the_identity():
    s = torch.rand(16, 32, generator=torch.Generator().manual_seed(3))
    perm = nm_permutation(s, 2, 4)
    assert nm_retained(s[:, perm], 2, 4) >= nm_retained(s, 2, 4)


def test_ria_2_4_permutes_gated_mlp_inputs_exactly_and_keeps_storage_order_n_m():
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    perm_model, plain = copy.deepcopy(model), copy.deepcopy(model)
    pk.prune_(perm_model, "ria", pattern="2:4", calibration=ids, progress=False)
    pk.prune_(plain, "ria", pattern="2:4", calibration=ids, progress=False, channel_permutation=False)
    pat = parse_pattern("2:4")
    for m in (perm_model, plain):
        assert all(pattern_holds(get_mask(mod), pat) for _, mod in masked_modules(m))
    down_p, down_0 = perm_model.model.layers[0].mlp.down_proj, plain.model.layers[0].mlp.down_proj
    # the permutation moved the down_proj columns (and gate/up rows) ...
    assert not torch.equal(down_p.parametrizations.weight.original, down_0.parametrizations.weight.original)
    # ... and kept more of the layer's weight mass under the same 2:4 budget (|W| weighted by the inputs)
    assert float(down_p.weight.detach().abs().sum()) > float(down_0.weight.detach().abs().sum())
    # attention layers are not permuted: their masks are the same in both runs
    assert torch.equal(get_mask(perm_model.model.layers[0].self_attn.q_proj),
                       get_mask(plain.model.layers[0].self_attn.q_proj))
    # removing every mask gives back the dense model's outputs exactly: the permutation changed no function
    for _, mod in list(masked_modules(perm_model)):
        remove_mask_(mod, bake=False)
    # (to rounding: permuted columns make down_proj sum its 128 terms in another order, and the change flows
    # on through 2 layers of about 350 terms and the head)
    assert torch.allclose(perm_model(ids).logits, ref, **tol(torch.float32, k=2 * 350 + 64))


def test_ria_unstructured_compares_the_whole_layer_and_reaches_the_sparsity():
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    r = pk.prune_(model, "ria", 0.6, calibration=ids, progress=False)
    assert r.sparsity == pytest.approx(0.6, abs=1e-3)
    rows = (~get_mask(model.model.layers[0].mlp.up_proj)).sum(1)
    assert int(rows.max()) != int(rows.min())  # per-layer comparison: rows differ in their counts
    row_model = tiny_model("llama", hidden=64, layers=2)
    pk.prune_(row_model, "ria", 0.6, calibration=ids, progress=False, compare="row")
    rows = (~get_mask(row_model.model.layers[0].mlp.up_proj)).sum(1)
    assert int(rows.max()) == int(rows.min())


def test_ria_config_round_trips_and_refuses_bad_values():
    cfg = METHODS.parse_config({"method": "ria", "sparsity": 0.7, "activation_power": 0.3})
    assert isinstance(cfg, RIAConfig) and RIAConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="activation_power"):
        pk.prune_(tiny_model("llama"), "ria", 0.5, calibration=torch.zeros(2, 8, dtype=torch.long),
                  activation_power=-1.0)


def test_ria_warns_when_no_layer_can_be_permuted():
    model = tiny_model("opt", hidden=64, layers=1)
    ids = torch.randint(2, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pk.prune_(model, "ria", pattern="2:4", calibration=ids, progress=False)
    assert any("channel_permutation found no layer" in str(w.message) for w in seen)
