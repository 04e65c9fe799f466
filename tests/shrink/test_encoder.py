"""Encoder residual width (BERT-style, ViT): exact where the removed channels carry nothing and the stream has zero
mean (LayerNorm's statistics then change only by √(H/K), which the correction undoes), reloaded by stock
from_pretrained, refused before any change where it cannot cut."""

import pytest
import torch
import transformers as tf

from prunekit.models.tiny import tiny_model
from prunekit.shrink.encoder import encoder_layout, prune_encoder_width_
from tests.tolerances import tol

H, DEAD_EVERY = 64, 4


def _center_rows_(w: torch.Tensor, dead: torch.Tensor, kept: torch.Tensor, dim: int) -> None:
    """Zero the dead channels of ``w`` along ``dim`` and center the kept ones there (mean 0 over the kept)."""
    w.index_fill_(dim, dead, 0.0)
    k = w.index_select(dim, kept)
    w.index_copy_(dim, kept, k - k.mean(dim, keepdim=True))


def _split():
    dead = torch.arange(0, H, DEAD_EVERY)
    kept = torch.tensor([i for i in range(H) if i % DEAD_EVERY])
    return dead, kept


@torch.no_grad()
def _dead_bert(model):
    """Every 4th residual channel zero wherever it is written, the stream zero-mean over channels, head 1 of every
    layer writing nothing: removing those channels and that head changes nothing but LayerNorm's √(H/K)."""
    dead, kept = _split()
    e = model.embeddings
    for table in (e.word_embeddings, e.position_embeddings, e.token_type_embeddings):
        _center_rows_(table.weight, dead, kept, 1)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.fill_(1.3).index_fill_(0, dead, 0.0)  # post-LN: a constant gain keeps the output zero-mean
            m.bias.normal_(0, 0.1)
            _center_rows_(m.bias, dead, kept, 0)
    for layer in model.encoder.layer:
        for dense in (layer.attention.output.dense, layer.output.dense):
            _center_rows_(dense.weight, dead, kept, 0)
            _center_rows_(dense.bias, dead, kept, 0)
        layer.attention.output.dense.weight[:, 16:32] = 0  # head 1 contributes nothing
    model.pooler.dense.weight[dead] = 0
    model.pooler.dense.bias[dead] = 0
    return kept


@torch.no_grad()
def _dead_vit(model):
    dead, kept = _split()
    e = model.embeddings
    _center_rows_(e.patch_embeddings.projection.weight, dead, kept, 0)
    _center_rows_(e.patch_embeddings.projection.bias, dead, kept, 0)
    _center_rows_(e.cls_token, dead, kept, 2)
    _center_rows_(e.position_embeddings, dead, kept, 2)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):  # pre-LN: the gains may be anything on the kept channels
            m.weight.uniform_(0.5, 1.5).index_fill_(0, dead, 0.0)
            m.bias.normal_(0, 0.1).index_fill_(0, dead, 0.0)
    for layer in model.layers:
        for lin in (layer.attention.o_proj, layer.mlp.fc2):
            _center_rows_(lin.weight, dead, kept, 0)
            _center_rows_(lin.bias, dead, kept, 0)
    return kept


def _vit(**o):
    torch.manual_seed(0)
    cfg = tf.ViTConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
                       patch_size=8, layer_norm_eps=1e-12, **o)
    return tf.ViTModel(cfg).eval()


def _bert_inputs(n=3, seq=10):
    torch.manual_seed(1)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, 7:] = 0
    return {"input_ids": torch.randint(0, 128, (n, seq)), "attention_mask": mask}


def test_bert_dead_channels_and_head_removed_exactly_and_reloads(tmp_path):
    model = tiny_model("bert", layer_norm_eps=1e-12)  # eps 1e-12: the √(H/K) correction is then exact
    kept = _dead_bert(model)
    x = _bert_inputs()
    with torch.no_grad():
        dense = model(**x)
    report = prune_encoder_width_(model, 48, calibration=[_bert_inputs(4, 12)])
    assert (report.hidden_after, report.heads_after) == (48, 3) and report.rescaled_norms
    assert model.config.hidden_size == 48 and model.config.num_attention_heads == 3
    with torch.no_grad():
        got = model(**x)
    # float32 through 2 post-LN layers of 64- and 128-term sums (~400 terms in the chain), values of order 1-3
    close = tol(torch.float32, 400, scale=3.0)
    torch.testing.assert_close(got.last_hidden_state, dense.last_hidden_state[..., kept], **close)
    torch.testing.assert_close(got.pooler_output, dense.pooler_output[..., kept], **close)
    assert report.params_after < report.params_before
    model.save_pretrained(tmp_path)
    back = tf.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**x).last_hidden_state, got.last_hidden_state, rtol=0, atol=1e-6)


def test_bert_keeping_every_head_cuts_head_dims_exactly_and_reloads(tmp_path):
    model = tiny_model("bert", layer_norm_eps=1e-12)
    kept = _dead_bert(model)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.output.dense.weight[:, 16:32] = torch.randn(64, 16) * 0.1  # head 1 alive again
            _center_rows_(layer.attention.output.dense.weight, *_split(), 0)
            att = layer.attention.self
            for h in range(4):  # in every head: 4 query/key dimensions and 4 value dimensions that carry nothing
                qk, v = h * 16 + torch.tensor([1, 5, 9, 13]), h * 16 + torch.tensor([0, 3, 6, 15])
                att.query.weight[qk] = 0
                att.query.bias[qk] = 0
                layer.attention.output.dense.weight[:, v] = 0
    x = _bert_inputs()
    with torch.no_grad():
        dense = model(**x)
    report = prune_encoder_width_(model, 48, calibration=[_bert_inputs(4, 12)], attention="head_dim")
    assert report.heads_after == 4 and model.encoder.layer[0].attention.self.attention_head_size == 12
    with torch.no_grad():
        got = model(**x)
    close = tol(torch.float32, 400, scale=3.0)  # a chain of ~400-term float32 sums, as above
    torch.testing.assert_close(got.last_hidden_state, dense.last_hidden_state[..., kept], **close)
    model.save_pretrained(tmp_path)
    back = tf.AutoModel.from_pretrained(tmp_path).eval()
    assert back.config.num_attention_heads == 4
    with torch.no_grad():
        torch.testing.assert_close(back(**x).last_hidden_state, got.last_hidden_state, rtol=0, atol=1e-6)


def test_vit_dead_channels_removed_exactly_with_every_head_and_reloads(tmp_path):
    model = _vit()
    kept = _dead_vit(model)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(pixel_values=pixels)
    report = prune_encoder_width_(model, 48, calibration=torch.randn(4, 3, 32, 32))
    assert report.heads_after == 4 and model.config.head_dim == 16 and model.config.pooler_output_size == 64
    with torch.no_grad():
        got = model(pixel_values=pixels)
    close = tol(torch.float32, 400, scale=3.0)  # as above: a chain of ~400-term float32 sums
    torch.testing.assert_close(got.last_hidden_state, dense.last_hidden_state[..., kept], **close)
    torch.testing.assert_close(got.pooler_output, dense.pooler_output, **close)  # the pooler keeps its output size
    model.save_pretrained(tmp_path)
    back = tf.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(pixel_values=pixels).pooler_output, got.pooler_output, rtol=0, atol=1e-6)


def test_activation_importance_finds_the_dead_channels():
    model = _vit()
    kept = _dead_vit(model)
    prune_encoder_width_(model, 48, calibration=torch.randn(4, 3, 32, 32), rescale_norms=False)
    torch.testing.assert_close(model.embeddings.cls_token.shape[-1], len(kept))
    # the cut model equals one cut at the dead channels by hand: compare with keep= on a fresh copy
    ref = _vit()
    _dead_vit(ref)
    ref_report = prune_encoder_width_(ref, keep=kept.tolist(), rescale_norms=False)
    assert torch.equal(ref.embeddings.cls_token, model.embeddings.cls_token)
    assert ref_report.kept == kept.tolist()


def test_layernorm_correction_reduces_the_error_where_removed_channels_are_quiet():
    """The removed channels carry a little (5% of their random scale) and the stream's mean is not zero: LayerNorm's
    statistics over the kept channels then differ token by token, so the cut is approximate; the measured
    first-order correction (gain and mean shift) must bring the outputs closer than the plain cut."""
    dead, kept = _split()

    def build():
        model = _vit()
        with torch.no_grad():
            e = model.embeddings
            for w, d in ((e.patch_embeddings.projection.weight, 0), (e.patch_embeddings.projection.bias, 0),
                         (e.cls_token, 2), (e.position_embeddings, 2)):
                w.index_copy_(d, dead, w.index_select(d, dead) * 0.05)
            for layer in model.layers:
                for lin in (layer.attention.o_proj, layer.mlp.fc2):
                    lin.weight[dead] *= 0.05
                    lin.bias[dead] *= 0.05
        return model

    torch.manual_seed(5)
    pixels, calib = torch.randn(2, 3, 32, 32), torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        dense = build()(pixel_values=pixels)
    errors = {}
    for rescale in (False, True):
        model = build()
        prune_encoder_width_(model, keep=kept.tolist(), calibration=calib, rescale_norms=rescale)
        with torch.no_grad():
            out = model(pixel_values=pixels)
        errors[rescale] = (float((out.pooler_output - dense.pooler_output).abs().max()),
                           float((out.last_hidden_state - dense.last_hidden_state[..., kept]).abs().max()))
    assert errors[True][0] < 0.7 * errors[False][0] and errors[True][1] < 0.7 * errors[False][1]


def test_vit_width_removes_far_more_than_the_mlp_alone():
    model = _vit()
    report = prune_encoder_width_(model, sparsity=0.5, importance="magnitude")
    assert report.hidden_after == 32
    removed = 1 - report.params_after / report.params_before
    assert removed > 0.3  # every matrix reads or writes the width; MLP-only channels removed 19.5% of a real ViT


def test_refusals_change_nothing():
    model = tiny_model("bert")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="multiple of 16"):
        prune_encoder_width_(model, 40, importance="magnitude")
    with pytest.raises(ValueError, match="calibration"):
        prune_encoder_width_(model, 48)
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_encoder_width_(model, 42, importance="magnitude", attention="head_dim")
    with pytest.raises(ValueError, match="BERT-style models only"):
        prune_encoder_width_(_vit(), 48, importance="magnitude", attention="heads")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="decoders"):
        encoder_layout(tiny_model("llama"))
    mlm = tf.BertForMaskedLM(model.config).eval()
    with pytest.raises(ValueError, match="does not know: cls.predictions"):
        prune_encoder_width_(mlm, 48, importance="magnitude")
