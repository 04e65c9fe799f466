import json

import pytest
import torch
from safetensors import safe_open

from prunekit.export.compressed import (FORMAT_24, FORMAT_BITMASK, compress_weight, decompress_weight,
                                        is_compressed_folder, load_compressed, plan_compression, read_compressed)
from prunekit.export.dtype import SaveDtype
from prunekit.export.save import save_model

from .conftest import logits, make_llama, pruned, rounded

BF16 = SaveDtype(torch.bfloat16, "test")


def test_bitmask_layout_is_the_compressed_tensors_one():
    w = torch.tensor([[0.0, 1.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0],
                      [4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    parts = compress_weight(w, FORMAT_BITMASK)
    assert parts["shape"].tolist() == [2, 9]
    assert parts["compressed"].tolist() == [1.5, 2.0, 3.0, 4.0]
    # bits packed little-endian along each row: row 0 has bits 1, 4 (byte 0) and 8 (byte 1)
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].tolist() == [[0b00010010, 1], [1, 0]]
    assert parts["row_offsets"].tolist() == [0, 3]
    assert torch.equal(decompress_weight(parts, FORMAT_BITMASK), w)


def test_24_layout_keeps_two_values_a_group_filling_sparse_groups_with_zeros():
    w = torch.tensor([[0.0, 5.0, 0.0, 6.0, 0.0, 0.0, 0.0, 7.0],
                      [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]])
    parts = compress_weight(w, FORMAT_24)
    assert parts["shape"].tolist() == [[2], [8]]
    assert parts["compressed"].shape == (2, 4)
    assert parts["compressed"].tolist() == [[5.0, 6.0, 0.0, 7.0], [0.0, 0.0, 1.0, 2.0]]
    assert (parts["bitmask"].view(-1).tolist()) == [0b10011010, 0b00110011]
    assert torch.equal(decompress_weight(parts, FORMAT_24), w)
    with pytest.raises(ValueError, match="more than 2 non-zeros"):
        compress_weight(torch.ones(2, 8), FORMAT_24)


def test_plan_picks_the_layout_the_zeros_allow_and_skips_the_head(tokenizer):
    unstructured = plan_compression(pruned(make_llama(len(tokenizer))), torch.bfloat16)
    assert unstructured.format == FORMAT_BITMASK and unstructured.structure == "unstructured"
    assert "lm_head" in unstructured.ignored and len(unstructured.compressed) == 14
    assert unstructured.compressed_bytes < unstructured.dense_bytes
    two_four = plan_compression(pruned(make_llama(len(tokenizer)), "2:4"), torch.bfloat16)
    assert two_four.format == FORMAT_24 and two_four.structure == "2:4"
    cfg = two_four.sparsity_config()
    assert cfg["targets"] == ["Linear"] and cfg["ignore"] == ["lm_head"] and cfg["format"] == "sparse-24-bitmask"


def test_a_layer_left_dense_is_stored_dense(tokenizer):
    model = pruned(make_llama(len(tokenizer)))
    model.model.layers[0].mlp.up_proj.weight.data.normal_()
    plan = plan_compression(model, torch.bfloat16)
    assert "model.layers.0.mlp.up_proj" in plan.ignored and len(plan.compressed) == 13


def test_no_sparsity_is_an_error_not_a_larger_file(tokenizer, tmp_path):
    model = make_llama(len(tokenizer))
    with pytest.raises(ValueError, match="no sparsity to compress.*0.0% zeros.*--format safetensors"):
        save_model(model, tokenizer, tmp_path / "out", "compressed", BF16)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pattern, fmt", [("unstructured", FORMAT_BITMASK), ("2:4", FORMAT_24)])
def test_compressed_folder_loads_back_with_identical_logits_and_is_smaller(tokenizer, tmp_path, pattern, fmt):
    model = pruned(make_llama(len(tokenizer)), pattern)
    ids = torch.randint(0, len(tokenizer), (2, 12))
    expected = logits(rounded(model), ids)
    dense = save_model(model, tokenizer, tmp_path / "dense", "safetensors", BF16)
    saved = save_model(model, tokenizer, tmp_path / "comp", "compressed", BF16)
    assert saved.layout == fmt and saved.compressed_modules == 14
    assert saved.weight_bytes < 0.85 * dense.weight_bytes
    config = json.loads((tmp_path / "comp" / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["sparsity_config"]["format"] == fmt
    assert config["dtype"] == "bfloat16" and is_compressed_folder(tmp_path / "comp")
    with safe_open(str(tmp_path / "comp" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.up_proj.bitmask" in keys and "model.layers.0.mlp.up_proj.weight" not in keys
    assert "lm_head.weight" not in keys  # tied to the embedding, as transformers saves it
    back, tok = load_compressed(tmp_path / "comp")
    assert torch.equal(logits(back, ids), expected)  # the same weights and classes here: the same arithmetic
    assert tok("def f").input_ids == tokenizer("def f").input_ids
    state = read_compressed(tmp_path / "comp")
    assert torch.equal(state["model.layers.1.self_attn.q_proj.weight"],
                       model.model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16))


def test_an_untied_head_is_stored_dense_beside_the_compressed_layers(tokenizer, tmp_path):
    model = pruned(make_llama(len(tokenizer), tie=False))
    ids = torch.randint(0, len(tokenizer), (1, 10))
    save_model(model, tokenizer, tmp_path / "comp", "compressed", BF16)
    back, _ = load_compressed(tmp_path / "comp")
    assert torch.equal(logits(back, ids), logits(rounded(model), ids))


def test_reading_a_folder_that_is_not_compressed_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a compressed-tensors sparse folder"):
        read_compressed(tmp_path)


def test_a_folder_whose_weights_do_not_fit_its_config_is_an_error_naming_them(tokenizer, tmp_path):
    model = pruned(make_llama(len(tokenizer)))
    save_model(model, tokenizer, tmp_path / "comp", "compressed", BF16)
    config_path = tmp_path / "comp" / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 96  # the stored MLP weights are 128 wide
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not match the model of its config.json.*mlp.*\(128, 64\)"):
        load_compressed(tmp_path / "comp")


def test_load_and_run_returns_the_model_after_one_forward_pass(tokenizer, tmp_path):
    from prunekit.export.load import load_and_run

    model = pruned(make_llama(len(tokenizer)))
    save_model(model, tokenizer, tmp_path / "comp", "compressed", BF16)
    lm = load_and_run(str(tmp_path / "comp"))
    ids = torch.randint(0, len(tokenizer), (1, 8))
    assert lm.causal_lm and torch.equal(logits(lm.model, ids), logits(rounded(model), ids))
