"""Head and neuron pruning on tiny Hugging Face Llama (GQA), ViT and BERT; config reload."""

import pytest
import torch
import transformers as T

import prunekit.structured as ps
from prunekit.structured.transformers.heads import head_scores
from prunekit.structured.transformers.neurons import neuron_scores

from tests.tolerances import tol


def llama(layers=2):
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32)
    return T.LlamaForCausalLM(cfg).eval()


def vit():
    cfg = T.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=48, num_labels=3)
    return T.ViTForImageClassification(cfg).eval()


def bert():
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    return T.BertModel(cfg).eval()


IDS = torch.randint(0, 64, (2, 7))
PIX = torch.randn(2, 3, 16, 16)
# A physically smaller model against the masked original: the same non-zero terms, summed by narrower kernels
# in another order; 2 layers of q/k/v (32), scores (head 8), values (7 tokens), o (32), MLP (32 + 48), head (32)
SMALLER_VS_MASKED = tol(torch.float32, k=2 * (32 + 8 + 7 + 32 + 32 + 48) + 32)


def _reload(model, tmp_path, cls):
    model.save_pretrained(tmp_path)
    return cls.from_pretrained(tmp_path).eval()


def test_gqa_heads_go_with_their_query_group_and_match_zeroed_heads(tmp_path):
    model = llama()
    attn = model.model.layers[0].self_attn
    scores = head_scores(ps.attention_layers(model)[0])
    assert scores.shape == (2,)  # one score per key/value group
    drop = int(scores.argmin())
    reference = llama()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():  # zero the o_proj columns of every head in the dropped group, in every layer
        for layer, part in zip(reference.model.layers, ps.attention_layers(model)):
            g = int(head_scores(part).argmin())
            layer.self_attn.o_proj.weight[:, g * 4 * 4:(g + 1) * 4 * 4] = 0
    out = ps.prune_heads_(model, sparsity=0.5)
    assert (out.heads_after, out.kv_heads_after, out.unit, out.reloadable) == (4, 1, "group", True)
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 4 and attn.o_proj.in_features == 16
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 1
    assert model.config.head_dim == 4
    assert drop in (0, 1)
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, **SMALLER_VS_MASKED)
    loaded = _reload(model, tmp_path, T.LlamaForCausalLM)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_neurons_match_zeroed_down_columns_and_reload(tmp_path):
    model = llama()
    reference = llama()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, part in zip(reference.model.layers, ps.mlp_layers(model)):
            drop = torch.argsort(neuron_scores(part), stable=True)[:24]
            layer.mlp.down_proj.weight[:, drop] = 0
    assert ps.prune_neurons_(model, sparsity=0.5).intermediate_size == 24
    mlp = model.model.layers[1].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 24
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, **SMALLER_VS_MASKED)
    loaded = _reload(model, tmp_path, T.LlamaForCausalLM)
    assert loaded.config.intermediate_size == 24
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_ratio_zero_changes_nothing():
    model = llama()
    before = model(IDS).logits
    ps.prune_heads_(model, 0.0)
    ps.prune_neurons_(model, 0.0)
    assert torch.equal(model(IDS).logits, before)
    assert model.config.num_attention_heads == 8


def test_at_least_one_key_value_group_remains():
    model = llama()
    out = ps.prune_heads_(model, 0.99)
    assert (out.heads_after, out.kv_heads_after) == (4, 1)
    model(IDS).logits.sum().backward()


def test_vit_heads_and_neurons_reload(tmp_path):
    model = vit()
    ps.prune_heads_(model, 0.5)
    ps.prune_neurons_(model, 0.25)
    assert model.vit.layers[0].attention.q_proj.out_features == 16
    assert model.vit.layers[0].mlp.fc1.out_features == 36
    out = model(PIX).logits
    out.sum().backward()
    loaded = _reload(model, tmp_path, T.ViTForImageClassification)
    torch.testing.assert_close(loaded(PIX).logits, out.detach(), rtol=0, atol=1e-6)


def test_bert_heads_run_and_neurons_reload(tmp_path):
    model = bert()
    with pytest.raises(ValueError, match="from_pretrained could not rebuild BertModel"):
        ps.prune_heads_(model, 0.5)  # BERT derives the head size from hidden_size / heads: refused, unchanged
    assert model.encoder.layer[0].attention.self.query.out_features == 32
    with pytest.warns(UserWarning, match="torch.save"):
        ps.prune_heads_(model, 0.5, reloadable=False)
    sa = model.encoder.layer[0].attention.self
    assert sa.query.out_features == 16 and sa.num_attention_heads == 2 and sa.all_head_size == 16
    assert model(IDS).last_hidden_state.shape == (2, 7, 32)
    other = bert()
    ps.prune_neurons_(other, 0.5)
    assert other.encoder.layer[0].intermediate.dense.out_features == 24
    loaded = _reload(other, tmp_path, T.BertModel)
    torch.testing.assert_close(loaded(IDS).last_hidden_state, other(IDS).last_hidden_state, rtol=0, atol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        ps.prune_heads_(llama(), 1.0)
    with pytest.raises(ValueError, match="importance"):
        ps.prune_neurons_(llama(), 0.5, importance="taylor")
    with pytest.raises(ValueError, match="no attention layers"):
        ps.prune_heads_(torch.nn.Linear(3, 3), 0.5)


def test_generic_prune_handles_a_transformer_through_the_recorded_graph():
    small = ps.prune(bert(), {"input_ids": IDS}, sparsity=0.5)  # fx cannot trace it; the recording can
    # a bare BertModel returns its hidden states, so the hidden width stays; the MLPs lose half
    assert small.config.intermediate_size == 24 and small.config.hidden_size == 32  # (see test_hf_verb.py)


def test_activation_importance_weighs_what_each_unit_writes():
    model = llama()
    with pytest.raises(ValueError, match="calibration"):
        ps.prune_neurons_(model, 0.5, importance="activation")
    part = ps.mlp_layers(model)[0]
    seen = []
    h = part.out.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().double()))
    model(IDS)
    h.remove()
    act = seen[0].reshape(-1, 48).square().mean(0)
    expected = act * part.out.weight.detach().double().square().sum(0)
    torch.testing.assert_close(neuron_scores(part, "activation", act=act), expected)
    reference = llama()
    reference.load_state_dict(model.state_dict())
    ps.prune_neurons_(model, 0.5, importance="activation", calibration=IDS)
    assert model.config.intermediate_size == 24
    rep = ps.prune_transformer_(reference, "heads", 0.5, calibration=[IDS, IDS[:1]])
    assert rep.importance == "activation" and rep.kv_heads_after == 1
