import copy

import pytest
import torch
from torch.profiler import profile

import prunekit.tokens as pt
from prunekit.core.config import ConfigError

from .conftest import TEXT, VISION, hf_bert, run, timm_vit

from tests.tolerances import tol


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_merge_reduces_tokens_as_planned_and_unpatch_is_exact(family):
    name, model, x = family
    before = run(model, x)
    keys = _state(model)
    report = pt.merge_(model, r=3)
    assert isinstance(report, pt.TokenReport) and report.method == "tome"
    merged = run(model, x)
    last = pt.last_forward(model)
    n0 = last["tokens"][0]
    assert last["tokens"] == [n0 - 3 * i for i in range(5)]
    if name in VISION:
        assert report.tokens_per_layer == last["tokens"][:-1]
        assert merged.shape == before.shape
    else:  # text outputs are unmerged back to the input length
        assert merged.shape == before.shape and last["output_tokens"] == n0
    assert not torch.equal(merged, before)
    assert torch.isfinite(merged).all()
    assert set(model.state_dict()) == set(keys)
    pt.unpatch_(model)
    assert not pt.is_patched(model)
    assert torch.equal(run(model, x), before)
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())


def test_merge_with_r_zero_changes_nothing(family):
    name, model, x = family
    before = run(model, x)
    pt.merge_(model, r=0)
    # the patched forward re-runs each layer from its submodules (other kernels, other orders): 4 layers of
    # q/k/v (≤ 48), scores (≤ 16), values (≤ 65 tokens), proj (48), MLP (48 + 192): about 4 · 420 terms
    torch.testing.assert_close(run(model, x), before, **tol(torch.float32, k=4 * 420))


@pytest.mark.parametrize("method", ["attention", "mean-attention", "cls-attention", "random"])
def test_prune_keeps_the_asked_fraction_at_the_asked_layers(family, method):
    name, model, x = family
    before = run(model, x)
    report = pt.prune_(model, keep=0.5, method=method, layers=(1, 2))
    out = run(model, x)
    last = pt.last_forward(model)
    n0 = last["tokens"][0]
    p = 2 if name == "hf-deit" else 1
    after1 = p + round(0.5 * (n0 - p))
    after2 = p + round(0.5 * (after1 - p))
    assert last["tokens"] == [n0, n0, after1, after2, after2]
    assert out.shape == before.shape and torch.isfinite(out).all()
    if name in VISION:
        assert report.tokens_per_layer == last["tokens"][:-1]
    pt.unpatch_(model)
    assert torch.equal(run(model, x), before)


def test_attention_rankings_differ_from_random():
    torch.manual_seed(0)
    model = timm_vit()
    x = torch.randn(4, 3, 32, 32)
    outs = {}
    for method in ("attention", "mean-attention", "cls-attention", "random"):
        pt.prune_(model, keep=0.3, method=method, layers=[1])
        outs[method] = run(model, x)
        pt.unpatch_(model)
    assert not torch.allclose(outs["attention"], outs["random"])
    assert not torch.allclose(outs["mean-attention"], outs["random"])
    assert not torch.allclose(outs["cls-attention"], outs["random"])


def test_sparsity_is_one_minus_keep():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    pt.prune_(model, keep=0.75, layers=[2])
    a = run(model, x)
    pt.unpatch_(model)
    pt.prune_(model, sparsity=0.25, layers=[2])
    assert torch.equal(run(model, x), a)
    pt.unpatch_(model)
    with pytest.raises(ValueError, match="not both"):
        pt.prune_(model, keep=0.5, sparsity=0.5)
    assert not pt.is_patched(model)


def test_the_fused_kernel_still_runs_in_every_layer():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    for patch in (lambda m: pt.merge_(m, r=4), lambda m: pt.prune_(m, keep=0.5, layers=[1, 2])):
        patch(model)
        with profile() as prof:
            run(model, x)
        calls = [e.count for e in prof.key_averages() if e.key == "aten::_scaled_dot_product_flash_attention_for_cpu"]
        assert calls == [4]
        pt.unpatch_(model)


def test_hf_models_keep_sdpa():
    model = hf_bert()
    ids = torch.randint(5, 100, (2, 20))
    pt.merge_(model, r=2)
    with profile() as prof:
        model(input_ids=ids)
    calls = [e.count for e in prof.key_averages() if e.key == "aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert calls == [4]


def test_padding_absorbs_merges_without_touching_real_tokens():
    model = hf_bert()
    ids = torch.randint(5, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 4:] = 0  # 4 real tokens, 12 padding tokens: enough for r=1 in each of 4 layers
    with torch.no_grad():
        alone = model(input_ids=ids[1:, :4]).last_hidden_state
    pt.merge_(model, r=1)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(batch[1, :4], alone[0], rtol=1e-4, atol=1e-4)


def test_unmerge_copies_merged_tokens_to_their_sources():
    model = timm_vit(global_pool="avg", class_token=False)
    x = torch.randn(2, 3, 32, 32)
    report = pt.merge_(model, r=8)
    assert "brought back to the input length" in str(report)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats.shape[1] == 64
    # 64 tokens, 32 left after 4 layers: every value appears at least once, on average twice
    uniq = torch.unique(feats[0, :, 0])
    assert len(uniq) == 32


def test_deepcopy_of_a_patched_model_is_independent():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)
    pt.merge_(model, r=4)
    merged = run(model, x)
    twin = copy.deepcopy(model)
    pt.unpatch_(model)
    assert torch.equal(run(twin, x), merged)
    assert torch.equal(run(model, x), before)
    pt.unpatch_(twin)
    assert torch.equal(run(twin, x), before)


def test_configs_and_registry_are_the_same_call():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    pt.merge_(model, r=4)
    a = run(model, x)
    pt.unpatch_(model)
    cfg = pt.ToMeConfig.from_yaml(pt.ToMeConfig(r=4).to_yaml())
    pt.apply_(model, cfg)
    assert torch.equal(run(model, x), a)
    pt.unpatch_(model)
    pt.apply_(model, {"method": "tome", "r": 4})
    assert torch.equal(run(model, x), a)
    pt.unpatch_(model)
    assert pt.TOKEN_METHODS.names() == ["attention", "cls-attention", "fastv", "mean-attention", "random", "tome"]
    with pytest.raises(ConfigError, match="did you mean 'r'"):
        pt.merge_(model, {"method": "tome", "rr": 3})


def test_per_layer_r_and_seq_len_report_for_text():
    model = hf_bert()
    report = pt.merge_(model, r=[4, 0, 2, 0], seq_len=32)
    assert report.tokens_per_layer == [32, 28, 28, 26] and report.output_tokens == 32
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (1, 32)))
    assert pt.last_forward(model)["tokens"] == [32, 28, 28, 26, 26]
    assert "32-token input" in str(report)


def test_report_is_data():
    model = timm_vit()
    report = pt.prune_(model, keep=0.5)
    d = report.to_dict()
    assert d["config"]["method"] == "attention" and d["config"]["keep"] == 0.5
    assert d["tokens_per_layer"] == [65, 65, 33, 17] and d["output_tokens"] == 9  # default layers 1, 2, 3 of 4
    assert "attention" in str(report) and "tokens per layer" in str(report)
    assert "unpatched" in str(pt.unpatch_(model))


# --- bad input: a clear error, the model unchanged ------------------------------------------------
def _unchanged(model, x, before):
    assert not pt.is_patched(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(run(model, x), before)


def test_r_too_large_names_the_limit():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)
    with pytest.raises(ValueError, match="largest uniform r is 12"):
        pt.merge_(model, r=16)
    _unchanged(model, x, before)
    with pytest.raises(ValueError, match="4 layers"):
        pt.merge_(model, r=[1, 2])
    _unchanged(model, x, before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(keep=0.0), r"keep must be a number in \(0, 1\]"),
    (dict(keep=1.5), r"keep must be a number in \(0, 1\]"),
    (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
    (dict(keep=0.5, layers=[7]), "do not exist"),
    (dict(keep=[0.5, 0.5], layers=[1]), "one per layer"),
    (dict(keep=0.5, method="fastv"), "decoder"),
    (dict(keep=0.5, method="atention"), "did you mean 'attention'"),
    (dict(keep=0.5, layer=2), "unknown option 'layer'"),
])
def test_bad_prune_settings(kwargs, match):
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)
    with pytest.raises((ValueError, TypeError), match=match):
        pt.prune_(model, **kwargs)
    _unchanged(model, x, before)


def test_unsupported_model_names_the_supported_families():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(pt.UnsupportedModel, match="supported encoders: timm-vit"):
        pt.merge_(model, r=2)
    assert "forward" not in model[0].__dict__


def test_patching_twice_is_an_error_and_changes_nothing():
    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)
    pt.merge_(model, r=4)
    merged = run(model, x)
    with pytest.raises(ValueError, match="already token-patched with 'tome'"):
        pt.merge_(model, r=4)
    with pytest.raises(ValueError, match="already token-patched"):
        pt.prune_(model, keep=0.5)
    assert torch.equal(run(model, x), merged)
    pt.unpatch_(model)
    assert torch.equal(run(model, x), before)
    with pytest.raises(ValueError, match="no token patch"):
        pt.unpatch_(model)


def test_patch_through_a_parent_is_seen_from_the_child():
    from .conftest import hf_vit

    model = hf_vit()
    pt.merge_(model, r=2)
    with pytest.raises(ValueError, match="already token-patched"):
        pt.merge_(model.vit, r=2)
    pt.unpatch_(model)
    assert not pt.is_patched(model)


def test_a_failure_while_patching_rolls_back(monkeypatch):
    from prunekit.tokens import api

    model = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "planned_tokens", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pt.merge_(model, r=4)
    _unchanged(model, x, before)


def test_unsupported_timm_block_is_refused():
    from timm.models.vision_transformer import ResPostBlock

    model = timm_vit(block_fn=ResPostBlock)
    with pytest.raises(pt.UnsupportedModel, match="ResPostBlock"):
        pt.merge_(model, r=2)
    assert not pt.is_patched(model)


def test_short_text_inputs_merge_less_and_say_so():
    model = hf_bert()
    pt.merge_(model, r=4)
    with pytest.warns(UserWarning, match="too short"):
        with torch.no_grad():
            model(input_ids=torch.randint(5, 100, (1, 12)))
    last = pt.last_forward(model)
    assert last["tokens"] == [12, 8, 5, 3, 2] and last["clamped"] == [(1, 4, 3), (2, 4, 2), (3, 4, 1)]
