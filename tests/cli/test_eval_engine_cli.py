"""``prunekit eval --engine llama.cpp``: GGUF files measured in llama.cpp (llama-bench speed, llama-perplexity);
bad input refused in one line before anything runs."""

import json

import pytest

from prunekit.cli import main
from prunekit.export.llama_cpp import llama_cpp_tool


def _gguf(tiny_folder, tmp_path, name="m.gguf", quant="f16"):
    path = tmp_path / name
    assert main(["export", str(tiny_folder / "model"), "--to", "gguf", "--quant", quant, "--out", str(path),
                 "--quiet"]) == 0
    return path


def test_engine_options_without_the_engine_are_refused(tiny_folder, capsys):
    assert main(["eval", "--model", str(tiny_folder / "model"), "--rounds", "3"]) == 2
    assert "--rounds applies to --engine llama.cpp only" in capsys.readouterr().err


def test_the_engine_measures_gguf_files_only(tiny_folder, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_folder / "model"), "--engine", "llama.cpp"]) == 2
    err = capsys.readouterr().err
    assert "is not a .gguf file; export it first: prunekit export" in err and err.count("\n") == 1
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    assert main(["eval", "--model", str(fake), "--baseline", str(fake), "--engine", "llama.cpp"]) == 2
    assert "--baseline and --model are the same file" in capsys.readouterr().err
    assert main(["eval", "--model", str(fake), "--engine", "llama.cpp", "--rounds", "1"]) == 2
    assert "--rounds must be an integer of at least 2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(llama_cpp_tool("llama-bench") is None or llama_cpp_tool("llama-perplexity") is None,
                    reason="llama.cpp is not built: run 'make llama-cpp'")
def test_a_gguf_is_measured_in_llama_cpp_against_its_baseline(tiny_folder, tmp_path, capsys):
    dense = _gguf(tiny_folder, tmp_path, "dense.gguf", "f16")
    small = _gguf(tiny_folder, tmp_path, "small.gguf", "q8_0")
    capsys.readouterr()
    assert main(["eval", "--model", str(small), "--baseline", str(dense), "--engine", "llama.cpp", "--rounds", "2",
                 "--windows", "2", "--seqlen", "32", "--ppl", str(tiny_folder / "texts"), "--prompt-tokens", "16",
                 "--gen-tokens", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["models"]) == {"baseline", "model"} and data["threads"] == 1 and data["rounds"] == 2
    assert data["models"]["model"]["bytes"] < data["models"]["baseline"]["bytes"]
    assert len(data["speedups"]["model"]["decode"]["values"]) == 2
    assert all(p["perplexity"] > 1 for p in data["perplexity"].values())
