"""Residual-width pruning: every family cut consistently, exact where the removed channels carry nothing,
reloaded by stock from_pretrained with the same logits, and refused before any change where it cannot cut."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.models.tiny import tiny_model
from prunekit.shrink import hidden_scores, prune_hidden_, width_layout

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]


def _dead_channels(model, every=4):
    """Zero every ``every``-th residual channel wherever it is written (embedding, o_proj, down_proj rows), so the
    residual stream is exactly 0 there and removing those channels changes nothing but the norms' RMS."""
    H = model.config.hidden_size
    dead = torch.arange(0, H, every)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dead] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[dead] = 0
            layer.mlp.down_proj.weight[dead] = 0
    return dead


def _reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [True, False])
def test_removing_dead_channels_is_exact_and_reloads(family, tied, tmp_path):
    # rms_norm_eps 1e-12: the RMS correction is then exact, so any mismatch is a cut in the wrong place
    model = tiny_model(family, rms_norm_eps=1e-12, tie_word_embeddings=tied)
    dead = _dead_channels(model)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        dense = model(ids).logits
    report = prune_hidden_(model, 64 - len(dead), calibration=torch.randint(0, 128, (4, 16)))
    assert report.hidden_after == 48 and model.config.hidden_size == 48
    with torch.no_grad():
        pruned = model(ids).logits
        back = _reload(model, tmp_path)(ids).logits
    # float32 logits of size ~1 after ~10 reductions of 48-64 terms in a different order: ~1e-6; 1e-4 is generous
    assert (pruned - dense).abs().max() < 1e-4
    assert (back - pruned).abs().max() < 1e-5  # the same weights and kernels: identical up to rounding
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert report.params_after < report.params_before


def test_dead_channels_are_the_ones_removed():
    model = tiny_model("llama")
    dead = _dead_channels(model)
    scores = hidden_scores(model, "activation", torch.randint(0, 128, (4, 16)))
    assert torch.all(scores[dead] == 0) and torch.all(scores[scores != 0] > 0)
    mag = hidden_scores(model, "magnitude")
    assert mag[dead].max() < mag.median()  # their columns in the readers still hold weights, the rest does not


def test_without_norm_rescaling_the_cut_is_not_exact():
    model = tiny_model("llama", rms_norm_eps=1e-12)
    dead = _dead_channels(model)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        dense = model(ids).logits
    prune_hidden_(model, 64 - len(dead), calibration=torch.randint(0, 128, (4, 16)), rescale_norms=False)
    with torch.no_grad():
        assert (model(ids).logits - dense).abs().max() > 1e-2  # each RMS over 48 instead of 64 channels


def test_magnitude_needs_no_calibration_and_keeps_heavy_channels(tmp_path):
    model = tiny_model("qwen2")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 7] *= 50
    report = prune_hidden_(model, sparsity=0.5, importance="magnitude")
    assert report.hidden_after == 32
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert (_reload(model, tmp_path)(ids).logits - model(ids).logits).abs().max() < 1e-5


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["gpt2", "phi3", "mixtral"])
def test_unknown_layouts_are_refused_before_any_change(family):
    model = tiny_model(family)
    before = _state(model)
    with pytest.raises(ValueError, match="residual-width pruning"):
        prune_hidden_(model, 32, calibration=torch.randint(0, 128, (2, 8)))
    assert _same(before, _state(model))


def test_a_width_the_config_class_refuses_is_refused_before_any_change():
    model = tiny_model("llama")  # 4 heads: LlamaConfig checks hidden_size % num_attention_heads
    before = _state(model)
    with pytest.raises(ValueError, match="hidden_size 50 gives a config LlamaConfig refuses"):
        prune_hidden_(model, 50, importance="magnitude")
    assert _same(before, _state(model)) and model.config.hidden_size == 64


def test_masked_models_are_refused():
    from prunekit.core.mask import set_mask_

    model = tiny_model("llama")
    set_mask_(model.model.layers[0].mlp.up_proj, torch.ones_like(model.model.layers[0].mlp.up_proj.weight,
                                                                   dtype=torch.bool))
    with pytest.raises(ValueError, match="holds pruning masks"):
        width_layout(model)


def test_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="calibration"):
        prune_hidden_(model, 32)  # activation importance without data
    with pytest.raises(ValueError, match="hidden_size must be an int in"):
        prune_hidden_(model, 65, importance="magnitude")
    with pytest.raises(ValueError, match="importance must be one of"):
        prune_hidden_(model, 32, importance="l3")
    assert model.config.hidden_size == 64


def test_same_width_changes_nothing_and_says_so():
    model = tiny_model("llama")
    report = prune_hidden_(model, 64, importance="magnitude")
    assert report.params_after == report.params_before and "nothing removed" in str(report)
