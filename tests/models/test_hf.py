import pytest
import torch

from prunekit.models.hf import load_model, plain_copy, resolve_model_path, tiny_model


@pytest.mark.parametrize("spec, match", [
    ("no-such-model", "does not exist"),
    ("smollm3-1b", "smollm2-135m"),
])
def test_unknown_alias_or_path_says_what_a_model_is(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_model_path(spec)


def test_folder_without_config_and_non_gguf_file(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_path(tmp_path)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_model_path(f)


def test_folder_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    tok.save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert lm.causal_lm and type(lm.model).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(lm.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_encoder_folder_loads_as_automodel(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tiny_model("bert").save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
                            ).save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert not lm.causal_lm and type(lm.model).__name__ == "BertModel"


def test_plain_copy_drops_quantization_config_and_keeps_ties():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.config.quantization_config = {"quant_method": "gguf"}
    copy = plain_copy(model)
    assert not hasattr(copy.config, "quantization_config")
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    torch.testing.assert_close(copy.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_unknown_tiny_family():
    with pytest.raises(ValueError, match="known: llama"):
        tiny_model("mamba")


@pytest.mark.slow
def test_smollm2_from_its_gguf_file_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = load_model("smollm2-135m")
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    lm.model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = lm.tokenizer("def f(x):", return_tensors="pt").input_ids
    torch.testing.assert_close(back(input_ids=ids).logits, lm.model(input_ids=ids).logits)
