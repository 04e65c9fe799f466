import copy
import math

import pytest
import torch
import transformers as tf

import prunekit as pk
from prunekit.models.hf import tiny_model
from prunekit.slicing import SliceConfig, plan_slice, slice_, sliced_width
from prunekit.slicing.slicegpt import _rotate_and_slice_, fitted_final_gain
from prunekit.slicing.layout import decoder_parts
from prunekit.slicing.pca import norm_input_covariances

from tests.tolerances import tol


def _model(family: str = "llama", tied: bool = True, seed: int = 0) -> torch.nn.Module:
    if family == "qwen3":
        torch.manual_seed(seed)
        cfg = tf.Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
        m = tf.Qwen3ForCausalLM(cfg).eval()
    else:
        m = tiny_model(family, hidden=64, layers=2, seed=seed)
        m.config.tie_word_embeddings = tied
        if tied:
            m.lm_head.weight = m.model.embed_tokens.weight
        else:
            m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norms with real gains, so fusing them matters
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or "layernorm" in n:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return m


IDS = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
# A rotated model against the original: each rotated weight is a 64-term sum (QᵀW), and the forward sums 2
# layers of q/k/v (64), scores (16), values (32 tokens), o (64), MLP (64 + 128), three rotations a layer (64 each)
ROTATED = tol(torch.float32, k=2 * (64 + 16 + 32 + 64 + 64 + 128 + 3 * 64) + 3 * 64)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_rotation_alone_changes_nothing(family):
    m = _model(family)
    ref = m(IDS).logits
    r = slice_(m, sparsity=0.0, head="untie", calibration=IDS, allow_growth=True, progress=False)
    assert r.hidden_after == r.hidden_before == 64 and r.head == "untied"
    assert torch.allclose(m(IDS).logits, ref, **ROTATED)
    assert not m.config.tie_word_embeddings


def test_tied_head_with_constant_gain_is_exact_and_fit_beats_projection():
    m = _model()
    with torch.no_grad():
        m.model.norm.weight.fill_(1.7)
    ref = m(IDS).logits
    slice_(m, sparsity=0.0, head="tied", calibration=IDS, progress=False)
    assert torch.allclose(m(IDS).logits, ref, **ROTATED)
    assert m.lm_head.weight is m.model.embed_tokens.weight

    # with a varying gain the tie costs something; the fitted gain is the least-squares optimum, at
    # most the cost of the plain projection diag(Qᵀ diag(g) Q) and of any perturbation of itself
    m = _model(seed=3)
    parts = decoder_parts(m)
    covs = norm_input_covariances(m, parts.norms, IDS, progress=False)
    q = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    e, g = parts.embed.weight.detach().double(), parts.final_norm.weight.detach().double()
    n = torch.randn(500, 64, dtype=torch.float64) * torch.linspace(0.1, 3, 64, dtype=torch.float64)
    cov = n.t() @ n
    target = n @ (e * g).t()

    def err(w):
        return ((n @ q * w) @ (e @ q).t() - target).square().sum()

    fit = fitted_final_gain(e, g, cov, q)
    proj = torch.diagonal(q.t() @ torch.diag(g) @ q)
    assert err(fit) < err(proj)
    for i in range(5):
        d = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) * 1e-2
        assert err(fit) < err(fit + d)
    assert covs[-1].shape == (64, 64)


def test_slice_25_percent_saves_and_reloads_with_stock_classes(tmp_path):
    m = _model()
    ref = copy.deepcopy(m)(IDS).logits
    with pytest.warns(UserWarning, match="only approximates the final norm's gain"):
        r = slice_(m, sparsity=0.25, head="tied", calibration=IDS, progress=False)
    assert (r.hidden_before, r.hidden_after) == (64, 48)
    assert r.params_after == sum(p.numel() for p in m.parameters()) < r.params_before
    assert r.head == "tied" and m.config.hidden_size == 48 and m.config.head_dim == 16
    out = m(IDS).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    m.save_pretrained(tmp_path)
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back) is type(m) and back.config.hidden_size == 48
    assert sum(p.numel() for p in back.parameters()) == r.params_after
    assert torch.allclose(back(IDS).logits, out, atol=1e-5)
    gen = back.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 7)


@pytest.mark.filterwarnings("ignore:head='tied'")
def test_default_unties_a_tied_head_exactly_and_counts_it():
    m = _model()
    r = slice_(m, sparsity=0.25, calibration=IDS, progress=False)
    assert r.head == "untied" and not m.config.tie_word_embeddings
    vocab, d2 = m.config.vocab_size, r.hidden_after
    tied = slice_(_model(), sparsity=0.25, head="tied", calibration=IDS, progress=False)
    assert r.params_after - tied.params_after == vocab * d2


def test_per_layer_rotations_are_exact_unsliced_and_reload_only_through_prunekit(tmp_path):
    from prunekit.slicing.per_layer import load_sliced, save_sliced

    m = _model(seed=2)
    ref = m(IDS).logits
    r = slice_(m, sparsity=0.0, rotation="per_layer", calibration=IDS, allow_growth=True, progress=False)
    assert torch.allclose(m(IDS).logits, ref, **ROTATED)
    assert r.head == "untied + shortcut matrices"
    m = _model(seed=2)
    plan = plan_slice(m, 0.5, rotation="per_layer")
    r = slice_(m, sparsity=0.5, rotation="per_layer", calibration=IDS, progress=False)
    layers = m.config.num_hidden_layers
    assert r.params_after == plan.params_after == sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for n, p in m.named_parameters() if "shortcut" in n) == 2 * layers * 32 * 32
    save_sliced(m, tmp_path)
    with pytest.raises((ValueError, KeyError)):
        tf.AutoModelForCausalLM.from_pretrained(tmp_path)  # stock classes would drop the shortcuts: refused
    back = load_sliced(tmp_path)
    assert torch.allclose(back(IDS).logits, m(IDS).logits, atol=1e-5)
    assert back.generate(IDS[:1, :4], max_new_tokens=2, do_sample=False).shape == (1, 6)
    with pytest.raises(ValueError, match="cannot stay tied"):
        plan_slice(_model(), 0.25, rotation="per_layer", head="tied")


def test_per_layer_growth_on_a_small_model_is_refused():
    m = _model()  # 2 layers of width 64: two 56×56 shortcuts per layer outweigh a 12.5% slice
    with pytest.raises(ValueError, match="shortcut matrices per block .* would grow"):
        slice_(m, sparsity=0.1, rotation="per_layer", calibration=IDS, progress=False)


def test_untied_head_reloads_untied(tmp_path):
    m = _model(tied=False)
    r = slice_(m, sparsity=0.5, calibration=IDS, progress=False)
    assert r.head == "untied" and r.hidden_after == 32
    m.save_pretrained(tmp_path)
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.lm_head.weight.data_ptr() != back.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(back(IDS).logits, m(IDS).logits, atol=1e-5)


def test_pca_beats_a_random_rotation():
    base = _model(seed=5)
    ref = base(IDS).logits
    errs = {}
    for how in ("pca", "random"):
        m = copy.deepcopy(base)
        if how == "pca":
            slice_(m, sparsity=0.5, head="untie", calibration=IDS, progress=False)
        else:
            parts = decoder_parts(m)
            q = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(0)))[0][:, :32]
            covs = norm_input_covariances(m, parts.norms, IDS, progress=False)
            _rotate_and_slice_(m, parts, q, covs[-1], "untied")
        errs[how] = (m(IDS).logits - ref).square().mean().item()
    assert errs["pca"] < 0.8 * errs["random"]


def test_kept_variance_falls_with_sparsity():
    kept = [slice_(_model(), sparsity=s, calibration=IDS, progress=False).kept_variance for s in (0.125, 0.25, 0.5)]
    assert 1 > kept[0] > kept[1] > kept[2] > 0


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_leaves_the_model_untouched(bad):
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        slice_(m, sparsity=bad, calibration=IDS, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_refusals_before_any_change():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="calibration"):
        slice_(m, sparsity=0.25, progress=False)
    with pytest.raises(ValueError, match="would grow"):
        slice_(m, sparsity=0.0, head="untie", calibration=IDS, progress=False)
    with pytest.raises(ValueError, match="not tied"):
        plan_slice(_model(tied=False), 0.25, head="tied")
    with pytest.raises(ValueError, match="unknown option 'ratio'"):
        slice_(m, ratio=0.25, calibration=IDS)
    pk.prune_(m, "magnitude", 0.5)
    with pytest.raises(ValueError, match="masks"):
        slice_(m, sparsity=0.25, calibration=IDS, progress=False)
    pk.unprune_(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("family,reason", [("gpt2", "no head_dim"), ("opt", "no head_dim"), ("bert", "post-norm")])
def test_unsupported_families_say_why(family, reason):
    with pytest.raises(ValueError, match=reason):
        plan_slice(tiny_model(family), 0.25)


def test_gemma_is_refused_with_the_reason():
    cfg = tf.Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="normalises each block's output"):
        plan_slice(tf.Gemma3ForCausalLM(cfg), 0.25)


def test_growth_is_allowed_when_asked_and_reported():
    m = _model()
    r = slice_(m, sparsity=0.0, head="untie", allow_growth=True, calibration=IDS, progress=False)
    assert r.params_after > r.params_before and r.params_removed < 0
    assert "fewer" in str(r)


@pytest.mark.filterwarnings("ignore:head='tied'")
def test_config_round_trip_and_width_rounding():
    cfg = SliceConfig(sparsity=0.3, head="untie")
    assert SliceConfig.from_yaml(cfg.to_yaml()) == cfg
    assert sliced_width(576, 0.25) == 432 and sliced_width(576, 0.3) == 400 and sliced_width(576, 0.0) == 576
    assert sliced_width(64, 0.99) == 8
    assert math.isclose(slice_(_model(), cfg.replace(sparsity=0.25), calibration=IDS, head="tied",
                               progress=False).sparsity, 0.25)
