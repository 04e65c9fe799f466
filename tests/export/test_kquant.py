"""K-quant GGUF export (prunekit writes f16, llama.cpp's llama-quantize converts): the type names, the error
without llama-quantize (before anything is written), the read-back that catches a wrong tensor, and — where
'make llama-cpp' built the tools — a real q4_K_M file read back by transformers and llama.cpp, with nothing left
beside it."""

import pytest
import torch

from prunekit.export import export
from prunekit.export.config import GGUFExport
from prunekit.export.gguf import parse_quant, plan_gguf, write_gguf
from prunekit.export.kquant import RELATIVE_RMS_BOUND, check_tensors, is_k_quant
from prunekit.export.llama_cpp import llama_cpp_tool
from prunekit.export.readback import ReadBackError

from .conftest import make_llama

needs_quantize = pytest.mark.skipif(llama_cpp_tool("llama-quantize") is None,
                                    reason="llama.cpp not built here ('make llama-cpp')")


def test_k_quant_names_are_accepted_in_any_case():
    assert parse_quant("Q4_K_M") == "q4_k_m" and parse_quant("q6_k") == "q6_k"
    assert GGUFExport(quant="Q5_K_S").quant == "q5_k_s"
    assert is_k_quant("Q3_K_L") and not is_k_quant("q8_0") and not is_k_quant("iq2_xxs")


def test_without_llama_quantize_a_k_quant_is_refused_before_anything_is_written(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_LLAMA_CPP", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="llama-quantize, which is not built .*make llama-cpp"):
        export(make_llama(len(tokenizer)), tokenizer, out / "m.gguf", to="gguf", quant="q4_K_M")
    assert list(out.iterdir()) == []


def test_the_read_back_passes_the_stored_weights_and_catches_a_permuted_tensor(tokenizer, tmp_path):
    model = make_llama(len(tokenizer))
    plan = plan_gguf(model, tokenizer, "f16")
    path = tmp_path / "m.gguf"
    write_gguf(model, plan, path)
    types, worst, stored = check_tensors(model, path, plan, path)
    assert types["F16"] == sum(t.qtype == "F16" for t in plan.tensors) and 0 < worst <= RELATIVE_RMS_BOUND["F16"]
    assert torch.allclose(stored["model.layers.0.mlp.down_proj.weight"],
                          model.model.layers[0].mlp.down_proj.weight, atol=1e-3)
    w = model.model.layers[1].self_attn.q_proj.weight
    with torch.no_grad():
        w.copy_(w.roll(1, dims=0))  # rows moved by one: the file no longer holds this weight
    with pytest.raises(ReadBackError, match=r"q_proj.weight \(F16\) reads back with a relative error of 1\.\d+"):
        check_tensors(model, path, plan, path)


@needs_quantize
def test_a_q4_k_m_export_reads_back_and_leaves_nothing_beside_it(tokenizer, tmp_path):
    # hidden 256: rows divide into the K-quants' 256-wide blocks, so Q4_K is really used
    model = make_llama(len(tokenizer), hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2)
    report = export(model, tokenizer, tmp_path / "m.gguf", to="gguf", quant="Q4_K_M")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    assert report.detail["quant"] == "q4_k_m" and report.bytes == (tmp_path / "m.gguf").stat().st_size
    assert report.detail["types"].get("Q4_K", 0) > 0 and report.detail["llama_quantize"]["fallbacks"] == []
    readers = " ".join(str(r) for r in report.detail["read_back"])
    assert "GGUFReader" in readers and "gguf_file=" in readers and "llama-simple" in readers
    f16 = export(model, tokenizer, tmp_path / "f16.gguf", to="gguf", quant="f16")
    assert report.bytes < 0.5 * f16.bytes


def test_a_failed_quantize_leaves_no_file_and_no_intermediate(tokenizer, tmp_path, monkeypatch):
    seen = []

    def fail(src, dst, type_, threads=1):
        seen.append(src.stat().st_size)  # the f16 intermediate was there
        raise RuntimeError("llama-quantize could not write Q4_K_M: out of memory")

    monkeypatch.setattr("prunekit.export.check_quantizer", lambda: None)
    monkeypatch.setattr("prunekit.export.kquant.quantize_gguf", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        export(make_llama(len(tokenizer)), tokenizer, tmp_path / "m.gguf", to="gguf", quant="q4_K_M")
    assert list(tmp_path.iterdir()) == [] and seen and seen[0] > 0
