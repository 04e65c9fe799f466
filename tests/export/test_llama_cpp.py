"""llama.cpp's own tools from Python: llama-quantize's fallback warnings read as llama.cpp prints them, and a missing
tool named with how to build it."""

import pytest

from prunekit.export import llama_cpp
from prunekit.export.llama_cpp import _FALLBACK, quantize_gguf


def _warning(name, ncols, block, asked, got):
    # the format of tensor_type_fallback in llama.cpp's src/llama-quant.cpp (llama-cpp-python 0.3.36)
    return (f"warning: {name:<36} - ncols {ncols:6d} not divisible by {block:3d} (required for type {asked:>7}) "
            f"-> falling back to {got:>7}\n")


def test_fallback_warnings_are_read_per_tensor():
    log = ("llama_model_quantize_impl: model size = 10 MB\n" + _warning("blk.0.ffn_down.weight", 1152, 256, "q4_K", "q5_0")
           + "[   3/  20] blk.0.attn_q.weight - [  512,   512,     1,     1], type =    f16, converting to q4_K\n"
           + _warning("blk.1.attn_output.weight", 384, 256, "q6_K", "q8_0"))
    found = [(m.group(1), m.group(2), m.group(4), m.group(5)) for m in _FALLBACK.finditer(log)]
    assert found == [("blk.0.ffn_down.weight", "1152", "q4_K", "q5_0"), ("blk.1.attn_output.weight", "384", "q6_K", "q8_0")]


def test_without_llama_quantize_the_error_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="llama-quantize is not built .*make llama-cpp"):
        quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q4_K_M")
    assert llama_cpp.llama_cpp_tool("llama-quantize") is None
