"""Llama 4 text (issue 20: Wanda and SparseGPT raised KeyError 'top_k_index'): its experts module is called
on the router-scaled rows of every expert, and stores (in, out) matrices without a layout marker."""

import copy
import warnings

import pytest
import torch

import prunekit as pk
from prunekit.calibrate.moe import as_fused_experts
from prunekit.core.mask import get_mask

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _llama4():
    import transformers as tf

    cfg = tf.Llama4TextConfig(vocab_size=128, hidden_size=64, intermediate_size=96, intermediate_size_mlp=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1)
    torch.manual_seed(0)
    return tf.Llama4ForCausalLM(cfg).eval()


def test_llama4_experts_layout_and_dispatch_are_read():
    experts = _llama4().model.layers[0].feed_forward.experts
    fused = as_fused_experts("e", experts)
    assert fused is not None and fused.transposed and not fused.routed and fused.gated
    assert tuple(fused.matrix("gate_up_proj", 0).shape) == (2 * 96, 64)
    assert tuple(fused.matrix("down_proj", 0).shape) == (64, 96)


def test_wanda_prunes_every_llama4_expert_on_the_tokens_routed_to_it():
    model = _llama4()
    experts = model.model.layers[0].feed_forward.experts
    seen = []
    handle = experts.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        model(IDS)
    handle.remove()
    x = seen[0].reshape(4, -1, 64)  # (experts, tokens, hidden): each expert's rows, scaled by the router
    report = pk.prune_(model, "wanda", 0.5, calibration=IDS, progress=False)
    assert report.skipped == {} and report.sparsity == pytest.approx(0.5)
    keep = get_mask(experts, "gate_up_proj")  # stored (experts, in, out)
    for e in range(4):
        rows = x[e][(x[e] != 0).any(-1)]
        assert 0 < rows.shape[0] < x.shape[1]  # top-1 of 4: some tokens, not all
        norms = rows.float().square().sum(0).sqrt()
        w = experts.gate_up_proj[e].detach().t()  # (out, in)
        score = w.abs() * norms.reshape(1, -1)
        expect = torch.ones_like(w, dtype=torch.bool)
        expect.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :32], False)
        assert torch.equal(keep[e].t(), expect)


def test_sparsegpt_prunes_llama4_and_the_model_still_runs():
    model = _llama4()
    dense = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pk.prune_(model, "sparsegpt", 0.5, calibration=IDS, progress=False)
    assert report.skipped == {} and report.sparsity == pytest.approx(0.5)
    assert "model.layers.1.feed_forward.experts.down_proj" in report.layers
    with torch.no_grad():
        a, b = dense(IDS).logits, model(IDS).logits
    assert torch.isfinite(b).all() and not torch.equal(a, b)
