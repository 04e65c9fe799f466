"""Per-layer shapes: the cut, the scores (zeroing = removing), the exact budget, the loader prunekit ships, the
speed= target on a given latency table, and bad input refused before anything changes."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.models.tiny import tiny_model
from prunekit.shrink import LayerShapes, apply_layer_shapes_, layer_shapes_of, load_shrunk, shrink_layers_
from prunekit.shrink.budget import non_embedding_params
from prunekit.shrink.latency import LatencyTable
from prunekit.shrink.perlayer import CONFIG_KEY, _loss, rank_units, score_options
from prunekit.shrink.width import param_count, token_batches

# float32 logits of the same weights through the same kernels: only the order of identical sums could differ
SAME = 1e-5


def _calib():
    return torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def _ids():
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(2))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family,tied", [("llama", True), ("qwen2", False), ("qwen3", True), ("gemma3", True)])
def test_a_heterogeneous_folder_reloads_with_load_shrunk_to_the_same_logits(tmp_path, family, tied):
    # qwen2: q/k/v biases and an untied head; qwen3 / gemma3: q/k norms; gemma3: sliding-window layer types
    model = tiny_model(family, layers=4, tie_word_embeddings=tied)
    s = layer_shapes_of(model)
    plan = LayerShapes((2, 1, 0, 1), (128, 48, 0, 96), s.queries_per_group, s.head_dim)  # block 2 removed
    report = apply_layer_shapes_(model, plan, calibration=_calib())
    assert layer_shapes_of(model).ffn == (128, 48, 96) and layer_shapes_of(model).kv_heads == (2, 1, 1)
    assert report.params_after == param_count(model) < report.params_before
    assert model.config.num_hidden_layers == 3 and getattr(model.config, CONFIG_KEY)["intermediate_size"] == [128, 48, 96]
    model.save_pretrained(tmp_path)
    back = load_shrunk(tmp_path)
    with torch.no_grad():
        assert (back(_ids()).logits - model(_ids()).logits).abs().max() < SAME
        out = back.generate(_ids()[:1], max_new_tokens=4, do_sample=False)  # the KV cache copes with the shapes
    assert out.shape == (1, 14)
    assert (back.get_output_embeddings().weight is back.get_input_embeddings().weight) == tied
    with pytest.raises(Exception, match="mismatch"):  # stock from_pretrained refuses it, loudly
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_uniform_per_layer_shapes_reload_with_stock_from_pretrained(tmp_path):
    model = tiny_model("mistral", layers=3)
    s = layer_shapes_of(model)
    apply_layer_shapes_(model, LayerShapes((1, 1, 1), (64, 64, 64), s.queries_per_group, s.head_dim),
                        calibration=_calib())
    assert not hasattr(model.config, CONFIG_KEY) and model.config.intermediate_size == 64
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (back(_ids()).logits - model(_ids()).logits).abs().max() < SAME
    assert type(load_shrunk(tmp_path)) is type(model)


def test_a_scored_option_is_the_loss_of_the_cut_model():
    # zeroing the dropped units' inputs of down_proj / o_proj is exactly removing them: the score of an option
    # is the cut model's loss increase (float32, the same sums in a different order: 1e-5)
    model = tiny_model("llama", layers=3)
    calib = _calib()
    ranking = rank_units(model, calib)
    table = score_options(model, calib, ranking, ("heads", "neurons", "depth"))
    s = layer_shapes_of(model)
    width, delta = table.options["mlp"][1][3]
    kv, delta_kv = table.options["attention"][2][1]
    for plan, expected in [(LayerShapes((2, 2, 2), (128, width, 128), s.queries_per_group, s.head_dim), delta),
                           (LayerShapes((2, 2, kv), (128, 128, 128), s.queries_per_group, s.head_dim), delta_kv),
                           (LayerShapes((2, 0, 2), (128, 0, 128), s.queries_per_group, s.head_dim), table.drop[1])]:
        trial = tiny_model("llama", layers=3)
        apply_layer_shapes_(trial, plan, ranking)
        assert _loss(trial, token_batches(calib)) - table.base_loss == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("optimizer", ["milp", "greedy"])
@pytest.mark.parametrize("target", ["params=0.55", "memory=0.7"])
def test_the_budget_is_met_exactly(target, optimizer):
    model = tiny_model("qwen2", layers=4, tie_word_embeddings=False)
    kind, f = target.split("=")
    dense = non_embedding_params(model) if kind == "params" else param_count(model)
    report = shrink_layers_(model, target, _calib(), ("heads", "neurons"), optimizer=optimizer)
    after = non_embedding_params(model) if kind == "params" else param_count(model)
    assert after <= math.floor(float(f) * dense) == report.budget
    assert report.non_embedding_after == non_embedding_params(model) and report.params_after == param_count(model)
    assert (after, dense) != (dense, dense)


def test_rounds_count_against_the_original_model():
    model = tiny_model("llama", layers=4)
    dense = non_embedding_params(model)
    shrink_layers_(model, "params=0.8", _calib())
    shrink_layers_(model, "params=0.6", _calib(), reference=dense)
    assert non_embedding_params(model) <= math.floor(0.6 * dense)


def test_unreachable_targets_and_bad_axes_change_nothing():
    model = tiny_model("llama", layers=4)
    before = _state(model)
    with pytest.raises(ValueError, match=r"cannot be reached with axes heads, neurons: the smallest .* or add depth"):
        shrink_layers_(model, "params=0.1", _calib())
    with pytest.raises(ValueError, match="cut the residual width with the uniform search"):
        shrink_layers_(model, "params=0.5", _calib(), ("hidden",))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        shrink_layers_(model, "params=0.5", _calib(), optimizer="annealing")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _table(dense_kv=2, dense_ffn=128):
    # a made-up table: 10 ms per token dense, a block 2 ms, its attention 0.5 ms per group, its MLP 1 ms per 128
    return LatencyTable(0.010, {2: 0.0, 1: -0.0005}, {f: -0.001 * (1 - f / dense_ffn) for f in (128, 112, 96, 80, 64, 48, 32)},
                        0.002, dense_kv, dense_ffn, 1, 8, 1, 4)


def test_speed_target_meets_the_predicted_time_and_refuses_the_unreachable():
    model = tiny_model("llama", layers=4)
    before = _state(model)
    with pytest.raises(ValueError, match=r"speed=100 cannot be reached .* ask for speed=2 or less"):
        shrink_layers_(model, "speed=100", _calib(), latency=_table())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = shrink_layers_(model, "speed=1.5", _calib(), ("heads", "neurons", "depth"), latency=_table())
    assert report.latency["predicted_s"] <= 0.010 / 1.5 + 1e-12
    assert report.latency["predicted_speedup"] >= 1.5


@pytest.mark.parametrize("optimizer", ["milp", "greedy"])
def test_a_plan_keeps_at_least_one_block_even_when_removing_every_block_looks_free(optimizer):
    """Adapt's second round on a 2-block model planned to remove both blocks (a random block's removal lowered
    the loss): the knapsack now caps block removal at all blocks but one."""
    from prunekit.shrink.optimize import Option
    from prunekit.shrink.perlayer import DROP, Choices, plan_layers

    model = tiny_model("llama", layers=2)
    now = layer_shapes_of(model)
    full = (now.kv_heads[0], now.ffn[0])
    half = (now.kv_heads[0], now.ffn[0] // 2)
    # per block: keep (0 saved, 0 loss), halve the MLP (-30, 0.5), drop (-100, 0.0): the drop is free and cheapest
    choices = Choices([[full, half, DROP]] * 2, [[Option(0, 0.0), Option(-30, 0.5), Option(-100, 0.0)]] * 2)
    shapes = plan_layers(model, choices, -110, optimizer)
    kept = [i for i in range(2) if (shapes.kv_heads[i], shapes.ffn[i]) != DROP]
    assert len(kept) == 1 and shapes.ffn[kept[0]] == now.ffn[0] // 2  # one block dropped, the other halved: -130


def test_a_k_quant_per_layer_cut_keeps_mlp_and_o_proj_rows_multiples_of_256():
    # hidden 512, 8 heads × 64 in 4 groups (o_proj reads 128 per group), MLP 1024: 1 or 3 groups would leave
    # o_proj rows of 128 or 384, which no 256-wide super-block fills
    model = tiny_model("llama", hidden=512, layers=2, intermediate_size=1024, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=64)
    dense = non_embedding_params(model)
    report = shrink_layers_(model, "params=0.6", _calib(), width_multiple=256)
    for b in model.model.layers:
        assert b.mlp.down_proj.in_features % 256 == 0 and b.self_attn.o_proj.in_features % 256 == 0
    assert report.to_dict()["width_multiple"] == 256 and not report.notes
    # within one option's step of the budget: the smallest cut the grid offers is 256 neurons of one block
    step = 3 * 512 * 256
    assert math.floor(0.6 * dense) - step < non_embedding_params(model) <= math.floor(0.6 * dense)


def test_a_per_layer_cut_whose_hidden_is_no_multiple_says_so():
    model = tiny_model("llama", hidden=320, layers=2, intermediate_size=1024, num_attention_heads=5,
                       num_key_value_heads=5, head_dim=64)
    report = shrink_layers_(model, "params=0.8", _calib(), ("neurons",), width_multiple=256)
    assert all(b.mlp.down_proj.in_features % 256 == 0 for b in model.model.layers)
    assert any(n.startswith("hidden 320 is not a multiple of 256") for n in report.notes)
    assert any("o_proj" in n for n in report.notes)  # 5 heads × 64 = 320 too
