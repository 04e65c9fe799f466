"""Block removal (ShortGPT Block Influence) and sublayer removal (FinerCut) on tiny HF models."""

import pytest
import torch
import transformers as T

import prunekit.structured as ps
from prunekit.structured.transformers.blocks import block_list

from .test_heads_neurons import IDS, PIX, bert, llama, vit


def test_block_influence_is_one_minus_cosine():
    model = llama(layers=3)
    bi = ps.block_influence(model, IDS)
    assert bi.shape == (3,) and bool(((bi >= 0) & (bi <= 2)).all())
    # an identity block (all its writes zeroed) has influence 0
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    bi = ps.block_influence(model, [IDS, IDS[:1]])
    assert abs(float(bi[1])) < 1e-9 and int(bi.argmin()) == 1  # float64: cos(h, h) is 1 to 32·eps64 ≈ 7e-15


def test_removing_the_least_influential_block_reloads(tmp_path):
    model = llama(layers=3)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.zero_()
        model.model.layers[1].self_attn.o_proj.weight.zero_()
    before = model(IDS).logits
    assert ps.prune_layers_(model, IDS, n=1).removed == [1]
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    torch.testing.assert_close(model(IDS).logits, before, rtol=1e-5, atol=1e-5)  # it was an identity
    model.save_pretrained(tmp_path)
    loaded = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    model.generate(IDS, max_new_tokens=2, do_sample=False)  # the KV cache still indexes layers right


def test_finercut_picks_a_silent_sublayer_first():
    model = llama(layers=2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.zero_()
    before = model(IDS).logits
    chosen = ps.prune_layers_(model, IDS, n=2, unit="sublayer").removed
    assert chosen[0] == (1, "mlp") and len(set(chosen)) == 2
    assert type(model.model.layers[1].mlp).__name__ == "_ZeroSublayer"
    assert model(IDS).logits.shape == before.shape


def test_a_prefix_of_the_greedy_order_is_the_smaller_choice():
    """FinerCut is greedy, so its first k choices of n are its choice of k: removing a prefix of
    choose_sublayers' order with remove_sublayers_ gives prune_layers_(n=k)'s model."""
    import copy

    from prunekit.structured.transformers.blocks import choose_sublayers, remove_sublayers_

    model = llama(layers=3)
    order = choose_sublayers(model, IDS, 4)
    assert len(set(order)) == 4
    small, prefix = copy.deepcopy(model), copy.deepcopy(model)
    assert ps.prune_layers_(small, IDS, n=2, unit="sublayer").removed == order[:2]
    remove_sublayers_(prefix, order[:2])
    torch.testing.assert_close(prefix(IDS).logits, small(IDS).logits, rtol=0, atol=0)
    assert not torch.equal(prefix(IDS).logits, model(IDS).logits)


def test_vit_sublayers_and_bert_blocks():
    model = vit()
    chosen = ps.prune_layers_(model, PIX, n=1, unit="sublayer").removed
    assert len(chosen) == 1
    assert model(PIX).logits.shape == (2, 3)
    b = bert()
    assert len(ps.prune_layers_(b, IDS, n=1).removed) == 1 and len(b.encoder.layer) == 1 and b.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="pre-norm"):
        ps.prune_layers_(bert(), IDS, n=1, unit="sublayer")


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="unit"):
        ps.prune_layers_(llama(), IDS, n=1, unit="head")
    with pytest.raises(ValueError, match=r"n must be"):
        ps.prune_layers_(llama(layers=2), IDS, n=2)
    with pytest.raises(ValueError, match="found no transformer blocks"):
        block_list(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="either n= .* or sparsity="):
        ps.prune_layers_(llama(), IDS, n=1, sparsity=0.5)


def test_prune_transformer_entry_point():
    model = llama(layers=4)
    rep = ps.prune_transformer_(model, "heads", 0.5)
    assert rep.heads_after == 4 and rep.params_after < rep.params_before
    rep = ps.prune_transformer_(model, "neurons", sparsity=0.25)
    assert rep.intermediate_size == 36
    with pytest.raises(ValueError, match="calibration"):
        ps.prune_transformer_(model, "layers", 0.5)
    rep = ps.prune_transformer_(model, "layers", 0.5, calibration=IDS)
    assert rep.blocks_after == 2 and len(rep.removed) == 2 and rep.to_dict()["unit"] == "block"
    with pytest.raises(ValueError, match="what"):
        ps.prune_transformer_(model, "channels", 0.5)
