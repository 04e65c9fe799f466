"""shrink_: the budget is met (counted exactly), the shape is the best scored candidate, the result reloads, and
bad input (unreachable target, unknown axis, no calibration, an unsupported family) changes nothing."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.models.tiny import tiny_model
from prunekit.shrink import (
    Counter, Shape, apply_shape_, calibration_loss, non_embedding_params, parse_target, shape_of, shrink_,
)
from prunekit.shrink.search import DEFAULT_CANDIDATES, candidates, grid
from prunekit.shrink.width import param_count


def _calib():
    return torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family,tied,kv", [("llama", True, 2), ("qwen3", False, 2), ("gemma2", True, 2),
                                             ("gemma3", True, 1)])
def test_counter_is_exact_for_every_shape_it_predicts(family, tied, kv):
    # kv=1: multi-query attention (Gemma 3 270M's layout): heads go by query heads, not groups
    model = tiny_model(family, layers=4, tie_word_embeddings=tied, num_key_value_heads=kv)
    counter = Counter.of(model)
    assert counter.non_embedding(shape_of(model)) == non_embedding_params(model)
    assert counter.total(shape_of(model)) == param_count(model)
    heads = 2 if kv == 2 else 3  # 4 → 2 heads by whole groups; 4 → 3 query heads (48 % 3 == 0)
    target = Shape(hidden=48, heads=heads, kv_heads=1, head_dim=shape_of(model).head_dim, ffn=96, layers=3)
    apply_shape_(model, target, _calib())
    assert shape_of(model) == target
    assert counter.non_embedding(target) == non_embedding_params(model)
    assert counter.total(target) == param_count(model)


def test_shrink_meets_the_budget_and_reloads(tmp_path):
    model = tiny_model("llama", layers=4)
    report = shrink_(model, "params=0.6", _calib())
    assert report.non_embedding_after == non_embedding_params(model)
    assert 0.55 <= report.non_embedding_kept <= 0.6  # within the default 5-point band under the budget
    scored = [c for c in report.candidates if c.loss is not None]
    assert len(scored) == min(len(report.candidates), DEFAULT_CANDIDATES) >= 2
    assert report.shape_after == min(scored, key=lambda c: c.loss).shape
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert (back(ids).logits - model(ids).logits).abs().max() < 1e-5  # same weights, same kernels


def test_the_chosen_shape_scores_what_the_search_measured():
    model = tiny_model("qwen2", layers=4)
    calib = _calib()
    report = shrink_(model, "params=0.7", calib, candidates=3)
    chosen = next(c for c in report.candidates if c.shape == report.shape_after)
    # the in-place cut repeats the scored trial exactly (same data, same order): float32 loss, ~1e-6 apart
    assert calibration_loss(model, calib) == pytest.approx(chosen.loss, abs=1e-5)


def test_memory_target_counts_every_weight():
    model = tiny_model("gemma3", layers=4)
    report = shrink_(model, "memory=0.5", _calib(), candidates=1)
    assert report.params_kept <= 0.5 and report.candidates[0].loss is None  # one candidate: not scored
    assert report.params_after == param_count(model)


def test_one_axis_only_moves_that_axis():
    model = tiny_model("mistral", layers=4)
    dense = shape_of(model)
    report = shrink_(model, "params=0.8", _calib(), axes=["hidden"], candidates=1)
    assert report.shape_after.with_(hidden=dense.hidden) == dense and report.shape_after.hidden < dense.hidden


def test_grid_widths_are_ones_the_config_accepts():
    model = tiny_model("llama", layers=4)  # LlamaConfig: hidden_size % num_attention_heads == 0
    for s in grid(shape_of(model), ("heads", "hidden"), model.config):
        assert s.hidden % s.heads == 0


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs,message", [
    ({"target": "params=0.01"}, "cannot be reached"),
    ({"target": "speed=1.5"}, "searched per layer: use prunekit.shrink.shrink_layers_"),
    ({"target": "params=1.5"}, "must be in \\(0, 1\\]"),
    ({"target": "flops=0.5"}, "unknown target"),
    ({"axes": ["width"]}, "unknown axis 'width'"),
    ({"calibration": None}, "needs calibration token ids"),
    ({"candidates": 0}, "candidates must be a positive int"),
])
def test_bad_input_changes_nothing(kwargs, message):
    model = tiny_model("llama", layers=4)
    before = _state(model)
    args = {"target": "params=0.6", "calibration": _calib(), **kwargs}
    with pytest.raises(ValueError, match=message):
        shrink_(model, **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.config.hidden_size == 64


def test_unreachable_names_what_is_reachable():
    with pytest.raises(ValueError, match=r"keeps \d+\.\d% of the non-embedding parameters; ask for params=0\.\d+"):
        shrink_(tiny_model("llama", layers=4), "params=0.01", _calib())


def test_candidates_are_under_the_budget_balanced_first():
    model = tiny_model("llama", layers=10, hidden=128)
    counter = Counter.of(model)
    found = candidates(shape_of(model), counter, parse_target("params=0.5"), ("heads", "neurons", "hidden", "depth"),
                       model.config)
    sizes = [counter.non_embedding(s) for s in found.shapes]
    assert all(found.budget - 0.05 * found.dense_count <= n <= found.budget for n in sizes)
    assert found.under_budget < found.grid_size and len(found.shapes) > 4


def test_unsupported_family_is_refused_before_any_change():
    model = tiny_model("gpt2")
    before = _state(model)
    with pytest.raises(ValueError, match="supports the Hugging Face decoders"):
        shrink_(model, "params=0.6", _calib())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _k_quant_model():
    # every width a multiple of 256 with room for one cut on each axis: hidden 512, 8 heads × 64 in 4 groups, MLP 1024
    return tiny_model("llama", hidden=512, layers=2, intermediate_size=1024, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=64)


def _rows(model):
    """Every row length llama.cpp's blocks must divide: each Linear's input width and the embedding's."""
    rows = {n: m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return {**rows, "embed": model.get_input_embeddings().weight.shape[1]}


def test_a_k_quant_shrink_keeps_every_row_a_multiple_of_256_and_reaches_the_target_within_a_step():
    model = _k_quant_model()
    counter, dense = Counter.of(model), shape_of(model)
    report = shrink_(model, "params=0.6", _calib(), width_multiple=256, candidates=2)
    assert all(n % 256 == 0 for n in _rows(model).values()), _rows(model)
    assert report.width_multiple == 256 and report.to_dict()["width_multiple"] == 256 and not report.notes
    # within the grid's step: no shape on the multiple-of-256 grid lies between the result and the budget
    target = parse_target("params=0.6")
    budget = int(0.6 * counter.non_embedding(dense))
    best = max(counter.measure(s, target) for s in grid(dense, ("heads", "neurons", "hidden", "depth"),
                                                          model.config, 256) if counter.measure(s, target) <= budget)
    assert report.non_embedding_after == best <= budget
    # the 32-multiple grid of the same model gets closer (its steps are finer): the multiple is what cost it
    fine = shrink_(_k_quant_model(), "params=0.6", _calib(), candidates=1)
    assert report.non_embedding_kept < fine.non_embedding_kept <= 0.6


def test_a_strict_multiple_the_model_cannot_meet_is_said_in_the_report():
    model = tiny_model("llama", layers=2)  # hidden 64: no width of the strict grid is a multiple of 256
    with pytest.raises(ValueError, match="cannot be reached .* keeps 100.0%"):
        shrink_(model, "params=0.6", _calib(), ("neurons", "hidden"), width_multiple=256)
    with pytest.raises(ValueError, match="width multiple must be a positive integer"):
        shrink_(model, "params=0.6", _calib(), width_multiple=0)


def test_a_target_the_dense_shape_meets_cuts_nothing_and_says_so():
    model = tiny_model("llama", layers=2)
    before = _state(model)
    report = shrink_(model, "params=1", _calib(), candidates=1)
    assert report.shape_after == report.shape_before and report.non_embedding_kept == 1.0
    assert "nothing cut: the dense shape already meets params=1" in str(report)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    cut = shrink_(tiny_model("llama", layers=2), "params=0.6", _calib(), candidates=1)
    assert "nothing cut" not in str(cut)


@pytest.mark.slow
@pytest.mark.skipif(__import__("prunekit.export.llama_cpp", fromlist=["x"]).llama_cpp_tool("llama-quantize") is None,
                    reason="llama.cpp's llama-quantize is not built: run 'make llama-cpp'")
def test_llama_quantize_keeps_every_tensor_of_a_256_multiple_shrink_in_k_quants(tmp_path):
    import gguf

    from prunekit.export import export
    from prunekit.export.llama_cpp import quantize_gguf
    from prunekit.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer(bos_token="<eos>")
    k_types = {"Q4_K", "Q5_K", "Q6_K"}  # what q4_K_M mixes; a fallback would be Q5_0, Q5_1, Q8_0 or F16

    def quantized(model, name):
        export(model, tok, tmp_path / f"{name}-f16.gguf", to="gguf", quant="f16")
        q = quantize_gguf(tmp_path / f"{name}-f16.gguf", tmp_path / f"{name}-q4_k_m.gguf", "Q4_K_M")
        types = {t.name: gguf.GGMLQuantizationType(int(t.tensor_type)).name
                 for t in gguf.GGUFReader(str(tmp_path / f"{name}-q4_k_m.gguf")).tensors if len(t.shape) > 1}
        return q, types

    model = tiny_model("llama", vocab_size=len(tok), hidden=512, layers=2, intermediate_size=1024,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=64, bos_token_id=0, eos_token_id=0)
    shrink_(model, "params=0.6", _calib(), width_multiple=256, candidates=1)
    q, types = quantized(model, "shrunk")
    assert q.fallbacks == [] and set(types.values()) <= k_types and len(types) == (1 if model.config.tie_word_embeddings else 2) + 7 * model.config.num_hidden_layers
    # the check can fail: an MLP of 1152 (no multiple of 256) leaves ffn_down's rows unfilled, and it falls back
    odd = tiny_model("llama", vocab_size=len(tok), hidden=512, layers=1, intermediate_size=1152,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=64, bos_token_id=0, eos_token_id=0)
    q, types = quantized(odd, "odd")
    assert types["blk.0.ffn_down.weight"] not in k_types and len(q.fallbacks) == 1 and "1152" in q.fallbacks[0]
