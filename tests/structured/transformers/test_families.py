"""Heads, neurons and blocks removed from every supported family (tiny random configs): the pruned model
computes exactly what the dense one does with the removed units zeroed, its config describes it, and it
reloads with from_pretrained wherever the config class can describe it (the report says which)."""

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.core.deprecation import PrunekitDeprecationWarning
import prunekit.structured as ps
from prunekit.core.scope import is_transposed
from prunekit.models.tiny import FAMILIES, tiny_model
from prunekit.core.fraction import keep_count
from prunekit.structured.transformers.common import top
from prunekit.structured.transformers.heads import unit_scores
from prunekit.structured.transformers.neurons import expert_neuron_scores, neuron_scores

from tests.tolerances import tol

IDS = torch.randint(0, 128, (2, 12))
# A physically smaller model against the masked original: the same non-zero terms, summed by narrower kernels
# in another order; 2 layers of q/k/v (64), scores (head 16), values (12 tokens), o (64), MLP (64 + 128), head (64)
SMALLER_VS_MASKED = tol(torch.float32, k=2 * (64 + 16 + 12 + 64 + 64 + 128) + 64)
VARIANTS = [(f, {}) for f in FAMILIES] + [
    ("falcon", {"new_decoder_architecture": False, "multi_query": True}),  # Falcon-7B: one key/value head
    ("falcon", {"new_decoder_architecture": False, "multi_query": False, "num_kv_heads": 4}),  # Falcon-RW
    ("gemma3", {"num_key_value_heads": 1}),  # Gemma 3 270M's layout
    ("llama", {"num_attention_heads": 8, "num_key_value_heads": 4}),
]
# Families whose config derives the head size from hidden_size / num_attention_heads: pruned heads do not reload.
DERIVED_HEAD_SIZE = {"gpt2", "gpt_neox", "opt", "falcon", "bert"}


def _out(model, ids=IDS):
    o = model(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _zero_inputs_(module, drop):
    w = module.weight
    if is_transposed(module):
        w[drop, :] = 0
    else:
        w[:, drop] = 0


def _reloads(model, tmp_path):
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_out(back), _out(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, overrides", VARIANTS, ids=[f + ("-" + "-".join(map(str, o.values())) if o else "")
                                                               for f, o in VARIANTS])
def test_heads_equal_zeroed_output_columns(family, overrides, tmp_path):
    model = tiny_model(family, **overrides)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for part in ps.attention_layers(reference):
            if part.kv_heads == 1:  # multi-query: query heads go, the shared key/value head stays
                scores = unit_scores(part, "query")
                q = torch.cat([g * part.rep + top(scores[g * part.rep:(g + 1) * part.rep], keep_count(part.rep, .5))
                               for g in range(part.kv_heads)])
            else:
                groups = top(unit_scores(part, "group"), keep_count(part.kv_heads, 0.5))
                q = (groups[:, None] * part.rep + torch.arange(part.rep)).flatten()
            _zero_inputs_(part.out, ~torch.isin(part.out_heads(), q))
    derived = family in DERIVED_HEAD_SIZE
    if derived:  # refused before anything changes: from_pretrained could not rebuild it
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match="from_pretrained could not rebuild.*Nothing was changed"):
            ps.prune_heads_(model, sparsity=0.5)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ps.prune_heads_(model, sparsity=0.5, reloadable=not derived)
    assert report.heads_after == report.heads_before // 2
    assert model.config.num_attention_heads == report.heads_after
    torch.testing.assert_close(_out(model), _out(reference), **SMALLER_VS_MASKED)
    assert report.reloadable == (family not in DERIVED_HEAD_SIZE)
    if report.reloadable:
        _reloads(model, tmp_path)
    else:
        assert "save it with torch.save" in str(report)


@pytest.mark.parametrize("family", FAMILIES)
def test_neurons_equal_zeroed_down_columns_and_reload(family, tmp_path):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for part in ps.mlp_layers(reference):
            _zero_inputs_(part.out, ~torch.isin(torch.arange(part.width), top(neuron_scores(part), part.width // 2)))
        for experts in ps.expert_layers(reference):
            fe = experts.fused
            for e in range(fe.num_experts):
                kept = top(expert_neuron_scores(experts, e), experts.width // 2)
                fe.leaf(fe.down)[e][:, ~torch.isin(torch.arange(experts.width), kept)] = 0
    report = ps.prune_neurons_(model, sparsity=0.5)
    assert all(after == before // 2 for before, after in report.widths.values())
    assert all(getattr(model.config, f) == after for f, (_, after) in report.widths.items())
    torch.testing.assert_close(_out(model), _out(reference), **SMALLER_VS_MASKED)
    assert report.reloadable
    _reloads(model, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_go_and_the_model_reloads(family, tmp_path):
    model = tiny_model(family, layers=3)
    report = ps.prune_layers_(model, torch.randint(0, 128, (2, 12)), n=1)
    assert report.blocks_after == 2 == model.config.num_hidden_layers and report.reloadable
    types = getattr(model.config, "layer_types", None)
    if types is not None:
        assert len(types) == 2
    _reloads(model, tmp_path)


def test_moe_dense_layers_stay_dense_after_block_removal(tmp_path):
    model = tiny_model("qwen3_moe", layers=4, mlp_only_layers=[1])
    ps.prune_layers_(model, IDS, n=1)
    dense = [i for i, b in enumerate(model.model.layers) if not hasattr(b.mlp, "experts")]
    assert model.config.mlp_only_layers == dense and model.config.decoder_sparse_step == 1
    _reloads(model, tmp_path)


@pytest.mark.parametrize("heads, kv, head_dim, hidden, sparsity, expect", [
    (8, 4, None, 64, 0.25, 4),   # 3 groups → 6 heads: 64 % 6 ≠ 0, so 2 groups (4 heads) are kept
    (8, 8, None, 64, 0.5, 4),    # plain multi-head attention: 4 of 8 heads
    (4, 2, 24, 64, 0.5, 2),      # head_dim decoupled from hidden_size / heads
    (6, 3, 16, 96, 1 / 3, 4),    # 2 of 3 groups: 96 % 4 == 0
])
def test_llama_head_layouts_reload(heads, kv, head_dim, hidden, sparsity, expect, tmp_path):
    extra = {"head_dim": head_dim} if head_dim else {}
    model = tiny_model("llama", hidden=hidden, num_attention_heads=heads, num_key_value_heads=kv, **extra)
    report = ps.prune_heads_(model, sparsity=sparsity)
    assert report.heads_after == expect and report.reloadable
    assert model.config.head_dim == report.head_dim
    _reloads(model, tmp_path)


def test_the_moved_count_is_reported_and_reloadable_false_keeps_the_asked_count():
    model = tiny_model("llama", hidden=48, num_attention_heads=12, num_key_value_heads=4)
    report = ps.prune_heads_(model, sparsity=0.25)  # 3 of 4 groups would be 9 heads: 48 % 9 ≠ 0
    assert report.heads_after == 6 and report.reloadable
    assert "kept 2 of 4 units instead of 3" in str(report) and "not a multiple" in str(report)
    other = tiny_model("llama", hidden=48, num_attention_heads=12, num_key_value_heads=4)
    with pytest.warns(UserWarning, match="from_pretrained cannot rebuild"):
        report = ps.prune_heads_(other, sparsity=0.25, reloadable=False)
    assert report.heads_after == 9 and not report.reloadable
    assert _out(other).shape == (2, 12, 128)


def test_masked_models_are_refused_unless_finalized():
    model = tiny_model("llama")
    pk.prune_(model, "magnitude", 0.5, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fn in (ps.prune_heads_, ps.prune_neurons_):
        with pytest.raises(ValueError, match="holds pruning masks on 14 tensors.*finalize=True"):
            fn(model, sparsity=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = ps.prune_neurons_(model, sparsity=0.5, finalize=True)
    assert report.intermediate_size == 64 and list(pk.masked_modules(model)) == []
    assert model.model.layers[0].mlp.down_proj.weight.shape == (64, 64) == (model.config.hidden_size,
                                                                              model.config.intermediate_size)


def test_ratio_is_a_deprecated_alias():
    model = tiny_model("llama")
    with pytest.warns(PrunekitDeprecationWarning, match="ratio= is deprecated, use sparsity="):
        report = ps.prune_heads_(model, ratio=0.5)
    assert report.sparsity == 0.5
    with pytest.warns(PrunekitDeprecationWarning):
        assert ps.prune_neurons_(model, ratio=0.25).intermediate_size == 96
    with pytest.raises(TypeError, match="not both"):
        ps.prune_neurons_(model, ratio=0.25, sparsity=0.25)


def test_reports_are_data():
    model = tiny_model("qwen2_moe")
    report = ps.prune_neurons_(model, sparsity=0.5)
    data = report.to_dict()
    assert data["widths"] == {"shared_expert_intermediate_size": [128, 64], "moe_intermediate_size": [64, 32]}
    assert "moe_intermediate_size 64 → 32" in str(report)
    heads = ps.prune_heads_(model, sparsity=0.5)
    assert heads.to_dict()["kv_heads_after"] == 1 and "2 → 1 key/value" in str(heads)
