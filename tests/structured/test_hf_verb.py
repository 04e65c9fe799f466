"""Hugging Face models through ``structured.prune``: hidden channels and MLP neurons through the graph with
the config kept true (``from_pretrained`` gives back the same model), tied embeddings kept tied, and
``what="heads"|"neurons"`` handed to the transformer functions."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit.structured as ps

tr = pytest.importorskip("transformers")
IDS = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(0))


def _llama(tie: bool = False):
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie)
    return tr.LlamaForCausalLM(cfg).eval()


def _bert():
    torch.manual_seed(0)
    cfg = tr.BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=32)
    return tr.BertForSequenceClassification(cfg).eval()


def _reloads(model, tmp_path, x) -> bool:
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        return torch.allclose(model(x).logits, again(x).logits, atol=1e-5)


def test_llama_hidden_and_mlp_channels_prune_update_the_config_and_reload(tmp_path):
    model = _llama()
    report = ps.prune_(model, IDS, sparsity=0.3, ignore=[model.lm_head])
    cfg = model.config
    assert cfg.hidden_size == model.model.embed_tokens.embedding_dim < 64 and cfg.hidden_size % 4 == 0
    assert cfg.intermediate_size == model.model.layers[0].mlp.gate_proj.out_features == 90
    assert cfg.head_dim == 16 and report.reloadable and report.macs_removed > 0.3
    assert _reloads(model, tmp_path, IDS)


def test_bert_ties_attention_widths_to_the_hidden_width_so_it_reloads(tmp_path):
    model = _bert()
    report = ps.prune_(model, IDS, sparsity=0.3)  # BERT derives head_dim = hidden_size / heads
    cfg = model.config
    att = model.bert.encoder.layer[0].attention.self
    assert cfg.hidden_size == att.query.out_features == att.query.in_features == 48
    assert att.attention_head_size * cfg.num_attention_heads == cfg.hidden_size
    assert report.reloadable and not report.repaired and _reloads(model, tmp_path, IDS)


def test_tied_embeddings_stay_tied():
    model = _llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ps.prune_(model, IDS, sparsity=0.3)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model(IDS).logits.shape == (1, 12, 128)


def test_heads_and_neurons_go_to_the_transformer_functions():
    model = _llama()
    original = copy.deepcopy(model.state_dict())
    fewer = ps.prune(model, IDS, sparsity=0.5, what="heads")
    assert fewer.config.num_key_value_heads == 1 and fewer.config.num_attention_heads == 2
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # prune leaves the original
    report = ps.prune_(model, IDS, sparsity=0.25, what="neurons", importance="activation")
    assert model.config.intermediate_size == 96 and report.what == "neurons" and report.params_after < report.params_before
    with pytest.raises(ValueError, match="what='heads'"):
        ps.prune_(model, IDS, sparsity=0.5, what="heads", importance="bn_scale")


def test_a_config_of_stage_widths_and_an_unused_mask_token_follow_the_pruned_model(tmp_path):
    torch.manual_seed(0)
    convnext = tr.ConvNextForImageClassification(tr.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                                                   num_labels=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    report = ps.prune_(convnext, x, sparsity=0.3, ignore=[convnext.classifier])
    assert convnext.config.hidden_sizes[0] < 16 and report.reloadable  # a list field, entry by entry
    convnext.save_pretrained(tmp_path / "c")
    again = type(convnext).from_pretrained(tmp_path / "c").eval()
    with torch.no_grad():
        assert torch.allclose(convnext(x).logits, again(x).logits, atol=1e-5)
    dino = tr.Dinov2ForImageClassification(tr.Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                                           image_size=32, patch_size=8, num_labels=10)).eval()
    ps.prune_(dino, x, sparsity=0.3, ignore=[dino.classifier])
    assert dino.dinov2.embeddings.mask_token.shape[-1] == dino.config.hidden_size < 64  # never used in forward


def test_mixture_of_experts_keeps_widths_the_grouped_kernel_can_take():
    torch.manual_seed(0)
    cfg = tr.Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=32)
    model = tr.Qwen3MoeForCausalLM(cfg).eval()
    report = ps.prune_(model, IDS, sparsity=0.3, ignore=[model.lm_head])
    assert model.config.hidden_size % 4 == 0 and model.config.moe_intermediate_size % 4 == 0
    assert model.config.hidden_size < 64 and report.macs_removed > 0.2 and report.reloadable
    assert model(IDS).logits.shape == (1, 12, 128)


def test_one_front_door_for_every_unit_layers_included():
    assert ps.WHATS == ("channels", "heads", "neurons", "layers")
    assert ps.StructuredConfig.from_yaml(ps.StructuredConfig(what="layers").to_yaml()).what == "layers"
    model = _llama()
    report = ps.prune_(model, IDS, sparsity=0.5, what="layers")  # the example inputs are the calibration
    assert len(model.model.layers) == model.config.num_hidden_layers == 1
    assert report.details["blocks_before"] == 2 and report.importance == "block_influence"
    assert report.reloadable is True and report.params_after < report.params_before
    with pytest.raises(ValueError, match="importance='taylor' does not apply"):
        ps.prune_(_llama(), IDS, sparsity=0.5, what="layers", importance="taylor")
    with pytest.raises(ValueError, match="ignore and engine apply to what='channels' only"):
        ps.prune_(_llama(), IDS, sparsity=0.5, what="neurons", ignore=["lm_head"])


def test_the_transformer_door_sends_channels_to_the_front_door():
    with pytest.raises(ValueError, match=r"heads, layers, neurons, got 'channels' \(channels: prunekit.structured.prune_"):
        ps.prune_transformer_(_llama(), "channels", sparsity=0.5)
