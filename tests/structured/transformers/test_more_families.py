"""Heads and neurons on more Hugging Face families (tiny random configs from transformers' config classes,
built offline by prunekit.models.tiny): what grouped-query attention can reach is said, a prune that
from_pretrained could not rebuild is refused before anything changes, and what is pruned reloads."""

import copy
import warnings

import pytest
import torch

import prunekit.structured as ps
from prunekit.models.tiny import tiny_model
from prunekit.structured.transformers.common import top
from prunekit.structured.transformers.heads import unit_scores

pytest.importorskip("transformers")
IDS = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
GQA = ("llama", "cohere", "starcoder2", "phi", "glm", "exaone4", "olmo2", "jamba", "llama4")  # 4 heads, 2 groups
# Families whose config derives the attention widths from the hidden size: pruned heads cannot reload.
HEADS_REFUSED = ("gptj", "helium", "olmoe", "gpt_bigcode", "bart", "albert", "electra", "xlm-roberta", "clip-text",
                 "siglip-text")
HEADS_RELOAD = ("cohere", "starcoder2", "phi", "glm", "exaone4", "olmo2", "jamba", "llama4")
NEURONS_RELOAD = ("cohere", "starcoder2", "phi", "glm", "exaone4", "olmo2", "olmoe", "jamba", "helium", "llama4",
                  "gpt_bigcode", "bart", "electra", "xlm-roberta", "clip-text", "siglip-text")


def _out(model, ids=IDS):
    o = model(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state, config):
    return model.config.to_dict() == config and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _reloads(model, tmp_path):
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    # float32 tiny models, the same weights and the same kernels: equal up to rounding of a few sums
    torch.testing.assert_close(_out(back), _out(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", GQA)
def test_gqa_heads_say_what_is_reachable_and_strict_refuses(family):
    model = tiny_model(family)
    state, config = _state(model), model.config.to_dict()
    with pytest.warns(ps.StructuredPruningWarning, match=r"removed 0% of the heads where 25% was asked: .* 4 query "
                      r"heads in 2 key/value groups; heads go by whole groups \(unit='group': 0%, 50%\) or by the "
                      r"same number of query heads in every group \(unit='query': 0%, 50%\)"):
        report = ps.prune_heads_(model, sparsity=0.25)
    assert (report.heads_after, report.reachable, report.removed_fraction) == (4, [0.0, 0.5], 0.0)
    assert "unit='group': 0%, 50%" in str(report) and _unchanged(model, state, config)
    with pytest.raises(ValueError, match=r"removed 0% of the heads where 25% was asked.*Nothing was changed"):
        ps.prune_heads_(model, sparsity=0.25, strict=True)
    with pytest.raises(ValueError, match=r"removed 0% of the heads where 25% was asked"):
        ps.prune_(model, IDS, 0.25, what="heads", strict=True)  # the front door passes strict on
    assert _unchanged(model, state, config)


def test_query_heads_reach_a_quarter_where_groups_cannot():
    model = tiny_model("llama", hidden=96, num_attention_heads=8, num_key_value_heads=2, head_dim=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 25% is reachable by query heads: no warning
        report = ps.prune_heads_(model, sparsity=0.25, unit="query")
    assert (report.heads_after, report.kv_heads_after, report.reachable) == (6, 2, [0.0, 0.25, 0.5, 0.75])
    assert model.config.num_attention_heads == 6 and model.config.num_key_value_heads == 2
    small = tiny_model("llama", num_attention_heads=8, num_key_value_heads=2, head_dim=16)  # hidden 64: 6 heads
    with pytest.warns(ps.StructuredPruningWarning, match=r"removed 50% .* 25% was asked.*kept 2 of 4 units instead "
                      r"of 3 so that from_pretrained reloads it \(LlamaConfig refuses it"):
        assert ps.prune_heads_(small, sparsity=0.25, unit="query").heads_after == 4


@pytest.mark.parametrize("family", HEADS_REFUSED)
def test_heads_that_would_not_reload_are_refused_before_anything_changes(family, tmp_path):
    model = tiny_model(family)
    state, config = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=r"from_pretrained could not rebuild .*Nothing was changed.*reloadable=False"):
        ps.prune_heads_(model, sparsity=0.5)
    assert _unchanged(model, state, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ps.prune_heads_(model, sparsity=0.5, reloadable=False)  # asked for: pruned, runs, said so
    assert not report.reloadable and report.heads_after == report.heads_before // 2
    assert _out(model).shape[:2] == IDS.shape
    model.save_pretrained(tmp_path)  # and the prediction was right: the stock loader cannot rebuild it
    with warnings.catch_warnings(), pytest.raises((RuntimeError, ValueError)):
        warnings.simplefilter("ignore")
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("family", HEADS_RELOAD)
def test_heads_reload_with_from_pretrained(family, tmp_path):
    model = tiny_model(family)
    report = ps.prune_heads_(model, sparsity=0.5)
    assert (report.heads_after, report.kv_heads_after) == (2, 1) and report.reloadable
    _reloads(model, tmp_path)


def test_olmo2_norms_over_all_heads_lose_the_removed_heads():
    model = tiny_model("olmo2")
    ps.prune_heads_(model, sparsity=0.5)
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (2 * 16,) and attn.k_norm.weight.shape == (16,)
    assert attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16


@pytest.mark.parametrize("multi_query", [True, False])
def test_gpt_bigcode_heads_equal_zeroed_output_columns(multi_query):
    model = tiny_model("gpt_bigcode", multi_query=multi_query)
    reference = copy.deepcopy(model)
    unit = "query" if multi_query else "group"
    with torch.no_grad():
        for part in ps.attention_layers(reference):
            assert (part.heads, part.kv_heads) == (4, 1 if multi_query else 4)
            kept = top(unit_scores(part, unit), 2)
            cols = ~torch.isin(part.out_heads(), kept)
            part.out.weight[:, cols] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ps.prune_heads_(model, sparsity=0.5, reloadable=False)  # GPTBigCode derives head_dim: no reload
    assert report.unit == unit and report.heads_after == 2
    # float32, the same products summed over fewer (zero) terms: equal up to rounding
    torch.testing.assert_close(_out(model), _out(reference), rtol=1e-5, atol=1e-5)


def test_bloom_heads_are_refused_for_alibi_and_neurons_for_a_width_no_field_gives():
    model = tiny_model("bloom")
    state, config = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match="uses ALiBi"):
        ps.prune_heads_(model, sparsity=0.5)
    with pytest.raises(ValueError, match=r"prune_neurons_: from_pretrained could not rebuild the pruned "
                                         r"BloomForCausalLM.*Nothing was changed"):
        ps.prune_neurons_(model, sparsity=0.5)
    assert _unchanged(model, state, config)


@pytest.mark.parametrize("family", NEURONS_RELOAD)
def test_neurons_reload_with_from_pretrained(family, tmp_path):
    model = tiny_model(family)
    report = ps.prune_neurons_(model, sparsity=0.5)
    assert report.reloadable and all(after == before // 2 for before, after in report.widths.values())
    assert all(getattr(model.config, f) == after for f, (_, after) in report.widths.items())
    _reloads(model, tmp_path)


def test_each_width_goes_to_the_config_field_that_gives_it():
    bart = ps.prune_neurons_(tiny_model("bart"), sparsity=0.5)
    assert bart.widths == {"encoder_ffn_dim": (128, 64), "decoder_ffn_dim": (128, 64)}
    llama4 = ps.prune_neurons_(tiny_model("llama4"), sparsity=0.5)  # dense MLPs, experts and the shared expert
    assert llama4.widths == {"intermediate_size_mlp": (256, 128), "intermediate_size": (128, 64)}
    assert ps.prune_neurons_(tiny_model("gpt_bigcode"), sparsity=0.5).widths == {"n_inner": (256, 128)}


def test_swin_channels_prune_and_reload(tmp_path):
    tf = pytest.importorskip("transformers")
    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                        num_labels=3)
    torch.manual_seed(0)
    model = tf.SwinForImageClassification(cfg).eval()
    x = torch.randn(1, 3, 32, 32)
    report = ps.prune_(model, x, sparsity=0.5)
    assert report.channels_removed_fraction == 0.5 and report.reloadable
    assert model.config.embed_dim % 4 == 0 and model.config.embed_dim < 16  # divisible by every stage's heads
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(back(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ("olmo2", "cohere", "llama4", "gptj", "gpt_bigcode", "bloom", "clip-text"))
def test_blocks_go_and_reload(family, tmp_path):
    model = tiny_model(family, layers=3)
    report = ps.prune_layers_(model, IDS, n=1)
    assert report.blocks_after == 2 and report.reloadable
    _reloads(model, tmp_path)


def test_a_block_removal_the_config_cannot_describe_is_refused_before_anything_changes():
    model = tiny_model("bart", layers=3)  # one of two stacks loses a block; the config has a count per stack
    state, config = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=r"prune_layers_: from_pretrained could not rebuild BartModel without blocks "
                                         r".*which the pruned model does not have: they would be random"):
        ps.prune_layers_(model, IDS, n=1)
    assert _unchanged(model, state, config)


def test_jamba_blocks_that_would_shift_the_expert_pattern_are_refused_unchanged():
    model = tiny_model("jamba", layers=3)  # expert layers sit at a period: removing block 0 shifts the pattern
    state, config = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=r"without blocks \[0\]: from_pretrained would build "
                                         r"model.layers.0.feed_forward.gate_proj.weight"):
        ps.prune_layers_(model, IDS, n=1)
    assert _unchanged(model, state, config)
