import pytest
import torch

import prunekit.tokens as pt

from .conftest import hf_bert, tiny_llama, tiny_qwen2

from tests.tolerances import tol

# FastV's shorter sequence against masks on the full one: the same terms, other kernels and orders; 4 layers of
# q/k/v (64), scores (head 16), values (≤ 33 tokens), o (64), MLP (64 + 128), then the head (64)
FEWER_TOKENS = tol(torch.float32, k=4 * (64 + 16 + 33 + 64 + 64 + 128) + 64)


def reference_logits(model, ids, layer, kept, extra=None):
    """FastV written as masks on the unpatched model: layers >= ``layer`` see only the kept prompt
    positions (plus any ``extra`` tokens after the prompt), every layer keeps all its rows."""
    inner = model.model
    full = ids if extra is None else torch.cat([ids, extra], dim=1)
    n, p = full.shape[1], ids.shape[1]
    h = inner.embed_tokens(full)
    pos = torch.arange(n)[None]
    pe = inner.rotary_emb(h, position_ids=pos)
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    visible = torch.zeros(n, dtype=torch.bool)
    visible[kept] = True
    visible[p:] = True
    pruned = causal & visible[None, None, None, :]
    if model.config._attn_implementation == "eager":  # eager attention adds a float mask
        causal, pruned = (torch.zeros(m.shape).masked_fill(~m, torch.finfo(h.dtype).min) for m in (causal, pruned))
    for i, block in enumerate(inner.layers):
        h = type(block).forward(block, h, attention_mask=causal if i < layer else pruned, position_embeddings=pe,
                                position_ids=pos)
    return model.lm_head(inner.norm(h))[0]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
@pytest.mark.parametrize("score", ["last", "mean"])
def test_pruned_prefill_and_decode_equal_fastv_as_masks(factory, score):
    torch.manual_seed(0)
    model = factory()
    ids = torch.randint(0, 200, (1, 30))
    nxt = torch.randint(0, 200, (1, 3))
    pt.prune_(model, keep=0.4, layer=2, score=score, recent=2)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        kept = pt.last_forward(model)["kept_positions"]
        assert len(kept) == 12 and kept[-2:] == [28, 29] and kept == sorted(kept)
        assert out.logits.shape[1] == 12
        cache = out.cache
        assert [layer.keys.shape[-2] for layer in cache.layers] == [30, 30, 12, 12]
        cont = model(nxt, cache=cache, use_cache=True)  # a 3-token continuation scored with the cache
        assert [layer.keys.shape[-2] for layer in cache.layers] == [33, 33, 15, 15]
        ref = reference_logits(model, ids, 2, kept, extra=nxt)
    torch.testing.assert_close(out.logits[0], ref[kept], **FEWER_TOKENS)
    torch.testing.assert_close(cont.logits[0], ref[30:], **FEWER_TOKENS)


def test_generate_is_cheaper_and_unpatch_is_exact():
    torch.manual_seed(0)
    model = tiny_llama()
    ids = torch.randint(0, 200, (2, 40))
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    report = pt.prune_(model, keep=0.25, layer=1, seq_len=40)
    assert report.tokens_per_layer == [40, 10, 10, 10]
    assert report.kv_cache_fraction == pytest.approx((40 + 3 * 10) / 160)
    with torch.no_grad():
        pruned = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    assert pruned.sequences.shape == full.sequences.shape
    lengths = [layer.keys.shape[-2] for layer in pruned.past_key_values.layers]
    assert lengths == [45, 15, 15, 15]  # 40 + 5 new in layer 0, 10 + 5 in the pruned layers
    assert pt.last_forward(model)["kept_tokens"] == 10
    pt.unpatch_(model)
    with torch.no_grad():
        again = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(again, full.sequences)


@pytest.mark.parametrize("score", ["recent", "random"])
def test_baseline_rankings(score):
    model = tiny_llama()
    ids = torch.randint(0, 200, (1, 20))
    pt.prune_(model, keep=0.5, layer=2, score=score, seed=3)
    with torch.no_grad():
        out = model(ids)
        kept = pt.last_forward(model)["kept_positions"]
        ref = reference_logits(model, ids, 2, kept)
    torch.testing.assert_close(out.logits[0], ref[kept], **FEWER_TOKENS)
    if score == "recent":
        assert kept == list(range(10, 20))
    else:
        assert kept != list(range(10, 20)) and kept[-1] == 19


def test_keep_one_is_the_unpatched_model():
    model = tiny_llama()
    ids = torch.randint(0, 200, (1, 20))
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=5, do_sample=False)
    pt.prune_(model, keep=1.0, layer=2)
    with torch.no_grad():
        b = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)


def test_left_padded_batch_generates():
    model = tiny_llama()
    ids = torch.randint(1, 200, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :8] = 0
    pt.prune_(model, keep=0.5, layer=2)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 28)
    # padding receives no attention, so it is dropped before any real token of the padded row
    kept = pt.last_forward(model)["kept_positions"]
    assert len(kept) == 12


def test_the_scoring_layer_keeps_sdpa():
    from torch.profiler import profile

    model = tiny_llama()
    pt.prune_(model, keep=0.5, layer=2)
    with profile() as prof, torch.no_grad():
        model(torch.randint(0, 200, (1, 32)))
    calls = [e.count for e in prof.key_averages() if e.key == "aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert calls == [4]
    assert model.model.layers[1].self_attn.config is not model.config
    pt.unpatch_(model)
    assert model.model.layers[1].self_attn.config is model.config


def test_bad_decoder_settings_leave_the_model_alone():
    model = tiny_llama()
    for kwargs, match in [(dict(keep=0.5, layer=4), r"layer must be in 1 … 3"), (dict(keep=0.5, layer=0), "greater than or equal to 1"),
                          (dict(keep=0.0), r"keep must be a number in \(0, 1\]"), (dict(keep=0.5, layers=[1]), "unknown option 'layers'")]:
        with pytest.raises(ValueError, match=match):
            pt.prune_(model, **kwargs)
        assert not pt.is_patched(model)
        assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(pt.UnsupportedModel, match="decoder language model"):
        pt.merge_(model, r=2)
    with pytest.raises(pt.UnsupportedModel, match="fastv"):
        pt.prune_(model, keep=0.5, method="attention")
    with pytest.raises(pt.UnsupportedModel, match="encoder"):
        pt.prune_(hf_bert(), keep=0.5, method="fastv")


def test_sliding_window_and_other_kernels_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             intermediate_size=64, vocab_size=100, sliding_window=16)).eval()
    with pytest.raises(pt.UnsupportedModel, match="sliding-window"):
        pt.prune_(model, keep=0.5, layer=1)
    llama = tiny_llama()
    llama.config._attn_implementation = "flex_attention"
    with pytest.raises(pt.UnsupportedModel, match="'sdpa' or 'eager'"):
        pt.prune_(llama, keep=0.5, layer=1)
    assert not pt.is_patched(llama)


def test_eager_attention_works_too():
    model = tiny_llama()
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 200, (1, 20))
    pt.prune_(model, keep=0.5, layer=2)
    with torch.no_grad():
        out = model(ids)
        kept = pt.last_forward(model)["kept_positions"]
        ref = reference_logits(model, ids, 2, kept)
    torch.testing.assert_close(out.logits[0], ref[kept], **FEWER_TOKENS)


@pytest.mark.parametrize("family", ["mixtral", "gpt2"])
def test_fastv_options_on_an_unsupported_decoder_name_the_decoders_fastv_supports(family):
    # issue 20: prune_(keep=0.5, layer=1) on Mixtral/GPT-2 said "unknown option 'layer'" (it fell back to the
    # encoder method); a decoder LM gets FastV by default, whose check names the decoders it supports
    from prunekit.models.tiny import tiny_model

    model = tiny_model(family)
    for kwargs in (dict(keep=0.5, layer=1), dict(keep=0.5)):
        with pytest.raises(pt.UnsupportedModel, match=r"^FastV supports Llama, Mistral, Qwen2, Qwen3 decoders; "
                                                      rf"\w+ \({family}\) is not one of them"):
            pt.prune_(model, **kwargs)
        assert not pt.is_patched(model) and all("forward" not in m.__dict__ for m in model.modules())
