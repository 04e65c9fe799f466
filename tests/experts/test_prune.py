"""Expert pruning and merging on tiny random MoE models of six families: counts, configs, reload, generate;
scores against hand computations; bad input refused with the model untouched."""

import pytest
import torch

from prunekit.experts import (EXPERT_METHODS, MOE_FAMILIES, ExpertPruneConfig, find_moe_layers, layer_stats,
                              merge_experts_, plan_experts, prune_experts_, reconstruction_scores, routed_output,
                              tiny_moe)
from prunekit.experts.merging import align_to, merge_layer_
from prunekit.experts.score import choose_keep

CALIB = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
NUM_KEY = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts", "qwen3_moe": "num_experts",
           "olmoe": "num_experts", "deepseek_v3": "n_routed_experts", "gpt_oss": "num_local_experts"}


def _reload_and_generate(model, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-5)
    assert back.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 7)
    return back


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("how", ["reap", "merge"])
def test_half_the_experts_save_reload_generate(family, how, tmp_path):
    model = tiny_moe(family)
    before = sum(p.numel() for p in model.parameters())
    if how == "merge":
        report = merge_experts_(model, 0.5, calibration=CALIB, progress=False)
    else:
        report = prune_experts_(model, 0.5, score=how, calibration=CALIB, progress=False)
    assert report.experts_before == 8 and report.experts_after == 4 and report.actual_sparsity == 0.5
    assert report.params_before == before and report.params_after < before
    for layer in find_moe_layers(model):
        assert layer.num_experts == 4
    back = _reload_and_generate(model, tmp_path)
    assert getattr(back.config, NUM_KEY[family]) == 4
    if family == "deepseek_v3":  # each routing group keeps two of its four
        for lr in report.layers:
            assert sorted(e // 4 for e in lr.kept) == [0, 0, 1, 1]
        assert back.config.n_group == 2


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "gpt_oss"])
@pytest.mark.parametrize("score", ["frequency", "reconstruction"])
def test_quarter_by_other_scores(family, score):
    model = tiny_moe(family)
    report = prune_experts_(model, 0.25, score=score, calibration=CALIB, progress=False)
    assert report.experts_after == 6 and all(len(l.kept) == 6 for l in report.layers)
    x = torch.randn(1, 8, model.config.hidden_size)
    with torch.no_grad():
        assert model(inputs_embeds=x).logits.shape == (1, 8, 128)


def _moe_inputs(model, layer):
    xs = []
    h = layer.block.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(CALIB)
    h.remove()
    return torch.cat(xs)


def test_reap_and_frequency_match_hand_computation():
    model = tiny_moe("qwen3_moe")
    layer = find_moe_layers(model)[0]
    x = _moe_inputs(model, layer)
    stats = layer_stats(layer, x)
    _, w, idx = layer.router(x)  # the model's own routing
    for e in range(8):
        tok, slot = torch.where(idx == e)
        assert stats.frequency[e].item() == pytest.approx(tok.numel() / (x.shape[0] * 2))
        if tok.numel():
            out = layer.experts(x[tok], torch.full((tok.numel(), 1), e), torch.ones(tok.numel(), 1))
            expect = (w[tok, slot] * out.norm(dim=-1)).mean().item()
            assert stats.reap[e].item() == pytest.approx(expect, rel=1e-4)


def _error(layer, x, keep):
    removed = torch.ones(layer.num_experts, dtype=torch.bool)
    removed[keep] = False
    ref = routed_output(layer, x)
    return float((ref - routed_output(layer, x, removed)).pow(2).sum() / ref.pow(2).sum())


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "deepseek_v3"])
def test_reconstruction_removes_what_changes_the_output_least(family):
    model = tiny_moe(family)
    layer = find_moe_layers(model)[0]
    x = _moe_inputs(model, layer)
    scores, errors = reconstruction_scores(layer, x, 2 if family == "deepseek_v3" else 4)
    kept = choose_keep(layer, scores, 2 if family == "deepseek_v3" else 4)
    assert errors == sorted(errors) and errors[-1] == pytest.approx(_error(layer, x, kept), rel=1e-4)
    stats = layer_stats(layer, x)
    for other in (stats.frequency, stats.reap):
        assert errors[-1] <= _error(layer, x, choose_keep(layer, other, 2 if family == "deepseek_v3" else 4)) + 1e-6


def test_merge_is_frequency_weighted_and_alignment_is_exact():
    model = tiny_moe("mixtral")
    layer = find_moe_layers(model)[0]
    t = {e: layer.get_expert(e) for e in range(8)}
    freq = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1, 0.0, 0.0, 0.0])
    merge_layer_(layer, {0: [0, 1], 2: [2, 3, 4], 5: [5, 6, 7]}, freq, align=False)
    assert layer.num_experts == 3
    got = layer.get_expert(0)["gate"][0]
    assert torch.allclose(got, 0.8 * t[0]["gate"][0] + 0.2 * t[1]["gate"][0], atol=1e-6)
    got = layer.get_expert(1)["down"][0]  # the centre 2, second kept
    assert torch.allclose(got, (0.3 * t[2]["down"][0] + 0.1 * t[3]["down"][0] + 0.1 * t[4]["down"][0]) / 0.5, atol=1e-6)
    uniform = (t[5]["up"][0] + t[6]["up"][0] + t[7]["up"][0]) / 3  # never-routed experts: the plain mean
    assert torch.allclose(layer.get_expert(2)["up"][0], uniform, atol=1e-6)
    # a member that is the centre with its neurons shuffled aligns back onto it exactly
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    shuffled = {k: (v.index_select(a, perm) if a is not None else v, a) for k, (v, a) in t[3].items()}
    aligned = align_to(t[3], shuffled)
    assert all(torch.equal(aligned[k][0], t[3][k][0]) for k in t[3])


def test_renormalize_switches_the_router_and_the_config(tmp_path):
    model = tiny_moe("qwen2_moe")  # norm_topk_prob=False
    assert not model.config.norm_topk_prob
    report = prune_experts_(model, 0.25, score="frequency", calibration=CALIB, renormalize=True, progress=False)
    assert report.renormalize and model.config.norm_topk_prob
    back = _reload_and_generate(model, tmp_path)
    layer = find_moe_layers(back)[0]
    _, w, _ = layer.router(torch.randn(16, 32))
    assert torch.allclose(w.sum(-1), torch.ones(16), atol=1e-5)
    mixtral = tiny_moe("mixtral")
    r = prune_experts_(mixtral, 0.25, score="frequency", calibration=CALIB, renormalize=True, progress=False)
    assert any("already renormalises" in n for n in r.notes)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family,sparsity,message", [
    ("mixtral", 0.9, "fewer than top_k=2"),
    ("olmoe", 0.875, "The most you can remove is 0.75"),
    ("deepseek_v3", 0.75, "every group needs ≥ 2"),
])
def test_too_few_experts_is_refused_before_any_change(family, sparsity, message):
    model = tiny_moe(family)
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        prune_experts_(model, sparsity, calibration=CALIB, progress=False)
    with pytest.raises(ValueError, match=message):
        merge_experts_(model, sparsity, calibration=CALIB, progress=False)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_other_bad_input():
    from prunekit.models.tiny import tiny_model

    model = tiny_moe("mixtral")
    with pytest.raises(ValueError, match="did you mean 'reap'"):
        prune_experts_(model, 0.5, score="reaps", calibration=CALIB)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune_experts_(model, 1.0, calibration=CALIB)
    with pytest.raises(ValueError, match="calibration"):
        prune_experts_(model, 0.5)
    with pytest.raises(ValueError, match="no mixture-of-experts layer"):
        prune_experts_(tiny_model("llama"), 0.5, calibration=CALIB)
    assert find_moe_layers(model)[0].num_experts == 8


def test_nothing_removed_says_so():
    model = tiny_moe("mixtral")
    report = prune_experts_(model, 0.1, calibration=CALIB, progress=False)  # 0.8 of an expert rounds down to 0
    assert report.experts_after == 8 and any("removes no expert" in n for n in report.notes)
    assert plan_experts(model, 0.1).keep == 8


def test_configs_parse_and_round_trip():
    cfg = EXPERT_METHODS.parse_config({"method": "expert_prune", "sparsity": 0.5, "score": "reconstruction"})
    assert isinstance(cfg, ExpertPruneConfig) and ExpertPruneConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="unknown option 'ratio'"):
        EXPERT_METHODS.parse_config({"method": "expert_merge", "ratio": 0.5})
    model = tiny_moe("olmoe")
    report = prune_experts_(model, config=cfg, calibration=CALIB, progress=False)
    assert report.score == "reconstruction" and report.experts_after == 4
