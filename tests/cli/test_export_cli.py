import json

import pytest
import torch

from prunekit.cli import main

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama (bf16, untied head) with a byte-level BPE tokenizer, and a folder of text."""
    from prunekit.models.hf import tiny_model
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

    fast = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=fast.vocab_size)
    model.config.tie_word_embeddings = False
    return write_tiny_folder(tmp_path_factory.mktemp("tiny"), model.to(torch.bfloat16), fast)


def _prune(tiny, out, *extra):
    return main(["prune", "--model", str(tiny / "model"), "--calib", str(tiny / "texts"), "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--out", str(out), "--quiet", *extra])


def test_prune_saves_in_the_source_dtype_and_reports_the_saved_bytes(tiny, tmp_path, capsys):
    assert _prune(tiny, tmp_path / "dense", "--json") == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["saved"]["dtype"] == "bfloat16" and "config.json says dtype bfloat16" in dense["saved"]["dtype_reason"]
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["dtype"] == "bfloat16"
    assert dense["after"]["file_bytes"] == (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert dense["saved"]["read_back"]["reader"].startswith("AutoModelForCausalLM.from_pretrained (transformers")
    assert dense["saved"]["read_back"]["max_abs_diff"] <= dense["saved"]["read_back"]["tolerance"]
    assert _prune(tiny, tmp_path / "f32", "--dtype", "float32", "--json") == 0
    assert json.loads(capsys.readouterr().out)["after"]["file_bytes"] > 1.9 * dense["after"]["file_bytes"]


def test_compressed_without_sparsity_is_refused_before_any_work(tiny, tmp_path, capsys):
    assert _prune(tiny, tmp_path / "x", "--format", "compressed", "--structured", "heads") == 2
    assert "nothing to compress" in capsys.readouterr().err
    assert _prune(tiny, tmp_path / "x", "--format", "compressed", "--sparsity", "0") == 2
    assert not (tmp_path / "x").exists()
    assert main(["export", str(tiny / "model"), "--to", "compressed", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "no sparsity to compress" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.skipif(__import__("prunekit.export.save", fromlist=["x"]).compressed_reader() is not None,
                    reason="this environment reads compressed folders")
def test_compressed_is_refused_before_any_work_where_nothing_reads_it(tiny, tmp_path, capsys):
    assert _prune(tiny, tmp_path / "comp", "--format", "compressed") == 2
    err = capsys.readouterr().err
    assert "compressed-tensors <= 0.14" in err and "--format safetensors" in err
    assert not (tmp_path / "comp").exists()


def test_export_to_gguf_and_eval_the_artifacts(tiny, tmp_path, capsys):
    assert _prune(tiny, tmp_path / "pruned") == 0
    capsys.readouterr()
    gguf = tmp_path / "pruned.gguf"
    assert main(["export", str(tmp_path / "pruned"), "--to", "gguf", "--quant", "q8_0", "--out", str(gguf),
                 "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bytes"] == gguf.stat().st_size and data["detail"]["types"] == {"F32": 5, "Q8_0": 16}  # 14 projections, embedding, untied head
    figures = {}
    for spec in (tmp_path / "pruned", gguf):
        assert main(["eval", "--model", str(spec), "--ppl", str(tiny / "texts"), "--windows", "2", "--seqlen", "32",
                     "--gen-tokens", "4", "--no-load-memory", "--json", "--quiet"]) == 0
        figures[spec.suffix] = json.loads(capsys.readouterr().out)
    assert figures[""]["artifact"]["format"].startswith("safetensors")
    assert figures[".gguf"]["artifact"]["format"].startswith("gguf (")
    assert figures[".gguf"]["file_bytes"] == gguf.stat().st_size
    assert figures[".gguf"]["perplexity"] == pytest.approx(figures[""]["perplexity"], rel=0.02)
    assert main(["export", str(tmp_path / "pruned"), "--to", "gguf", "--out", str(gguf), "--quiet"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_measures_the_peak_memory_of_loading(tiny, capsys):
    assert main(["eval", "--model", str(tiny / "model"), "--ppl", str(tiny / "texts"), "--windows", "2",
                 "--seqlen", "32", "--gen-tokens", "2", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["load_memory"]["peak_bytes"] > data["load_memory"]["baseline_bytes"] > 50e6
    assert data["load_memory"]["added_bytes"] > 0
    assert data["load_peak_bytes"] == data["load_memory"]["peak_bytes"]


@pytest.mark.parametrize("argv, match", [
    (["--to", "gguf", "--quant", "iq2_xxs"], "cannot be written here"),
    (["--to", "gguf", "--dtype", "bfloat16"], "--dtype applies to --to compressed"),
    (["--to", "safetensors", "--quant", "q8_0"], "--quant applies to --to gguf only"),
    (["--to", "gguf", "--out-of", "x"], None),
])
def test_export_bad_arguments_are_errors_before_loading(tiny, tmp_path, capsys, argv, match):
    out = ["--out", str(tmp_path / "m.gguf")] if "--out-of" not in argv else []
    if match is None:
        with pytest.raises(SystemExit):
            main(["export", str(tiny / "model"), *argv, *out])
        return
    assert main(["export", str(tiny / "model"), *argv, *out, "--quiet"]) == 2
    assert match in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_an_out_that_is_the_input_model_is_refused_before_any_work(tiny, tmp_path, capsys):
    # issue 20: --out equal to the model being read (a folder prunekit wrote, so --overwrite could replace it)
    # would lose the input; prune and export refuse it before loading, and the folder is untouched
    assert _prune(tiny, tmp_path / "pruned") == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "pruned").iterdir())
    capsys.readouterr()
    assert main(["prune", "--model", str(tmp_path / "pruned"), "--calib", str(tiny / "texts"), "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--out", str(tmp_path / "pruned"), "--overwrite",
                 "--quiet"]) == 2
    assert "is the input --model" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "pruned"), "--to", "safetensors", "--out", str(tmp_path / "pruned"),
                 "--overwrite", "--quiet"]) == 2
    assert "is the input --model" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny / "model"), "--calib", str(tiny / "texts"), "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--out", str(tiny), "--overwrite", "--quiet"]) == 2
    assert "holds the input --model" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "pruned").iterdir()) == before
