"""What a calibrated method cannot score stays dense, is listed with the reason, the same in every block, and
is not counted in the reported sparsity (issue 20: Mamba's dt_proj and conv1d; encoders' MLM heads, poolers)."""

import warnings

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask

IDS = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _mamba():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MambaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)
    return tf.MambaForCausalLM(cfg).eval()


@pytest.mark.parametrize("method, settings", [("wanda", {}), ("wanda", {"allocation": "owl"}), ("sparsegpt", {}),
                                              ("sparsegpt", {"sequential": "block"}),
                                              ("sparsegpt", {"one_pass_max_gb": 1e-9})])
def test_mamba_layers_the_forward_never_calls_are_listed_alike_in_every_block(method, settings):
    model = _mamba()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pk.prune_(model, method, 0.5, calibration=IDS, progress=False, **settings)
    mixers = [f"backbone.layers.{i}.mixer" for i in (0, 1)]
    # dt_proj's weight is used directly by the forward (never called as a module): no activations; the
    # depthwise conv1d is not a Linear layer; both blocks alike (block 0's conv is not taken for a stem)
    assert set(report.skipped) == {f"{m}.{p}" for m in mixers for p in ("dt_proj", "conv1d")}
    assert "never called it as a module" in report.skipped["backbone.layers.0.mixer.dt_proj"]
    assert "a convolution (Conv1d)" in report.skipped["backbone.layers.1.mixer.conv1d"]
    for m in mixers:
        mixer = model.get_submodule(m)
        assert get_mask(mixer.dt_proj) is None and get_mask(mixer.conv1d) is None
    assert set(report.layers) == {f"{m}.{p}" for m in mixers for p in ("in_proj", "x_proj", "out_proj")}
    if method == "sparsegpt" or "allocation" not in settings:
        assert report.sparsity == pytest.approx(0.5, abs=1e-3)  # over what was pruned (it said 0.5 over all)
    dense = sum(model.get_submodule(n).weight.numel() for n in report.skipped)
    assert report.params_left_dense == dense


def test_magnitude_prunes_every_block_of_mamba_alike():
    model = _mamba()
    report = pk.prune_(model, "magnitude", 0.5, progress=False)
    assert report.skipped == {} and {"backbone.layers.0.mixer.conv1d", "backbone.layers.1.mixer.conv1d"} <= set(
        report.layers)


def _encoders():
    import transformers as tf

    base = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return {
        "albert": (tf.AlbertForMaskedLM, tf.AlbertConfig(**base, embedding_size=32),
                   {"predictions.dense", "albert.encoder.embedding_hidden_mapping_in"}),
        "deberta-v2": (tf.DebertaV2ForMaskedLM, tf.DebertaV2Config(**base), {"cls.predictions.transform.dense"}),
        "electra": (tf.ElectraForMaskedLM, tf.ElectraConfig(**base, embedding_size=64),
                    {"generator_predictions.dense"}),
        "xlm-roberta": (tf.XLMRobertaForMaskedLM, tf.XLMRobertaConfig(**base), {"lm_head.dense"}),
        "bert-classifier": (tf.BertForSequenceClassification, tf.BertConfig(**base),
                            {"bert.pooler.dense", "classifier"}),
    }


@pytest.mark.parametrize("family", list(_encoders()))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_encoder_heads_outside_the_blocks_are_listed_and_not_counted(family, method):
    cls, cfg, heads = _encoders()[family]
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pk.prune_(model, method, 0.5, calibration=IDS, progress=False)
    assert set(report.skipped) == heads and all("outside the transformer blocks" in r for r in report.skipped.values())
    assert not heads & set(report.layers)
    assert report.sparsity == 0.5  # it said 0.444–0.471 when the dense heads counted
