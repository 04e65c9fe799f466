"""The measured latency table: real timings of the model and its probes, monotone effects, and the speed= target
parsed with its range."""

import pytest
import torch

from prunekit.models.tiny import tiny_model
from prunekit.shrink.budget import Target, parse_target
from prunekit.shrink.latency import decode_seconds, measure_table


def test_speed_targets_parse_and_out_of_range_ones_are_refused():
    assert parse_target("speed=1.5") == Target("speed", 1.5)
    for bad in ("speed=0.5", "speed=inf", "speed=x"):
        with pytest.raises(ValueError, match="speed="):
            parse_target(bad)


def test_the_table_times_every_width_and_never_counts_a_narrower_module_slower():
    model = tiny_model("llama", layers=2)
    assert decode_seconds(model, tokens=2, repeats=1) > 0
    table = measure_table(model, [2, 1], [128, 96, 64], tokens=2, repeats=2, probe_layers=2)
    assert set(table.attention) == {2, 1} and set(table.mlp) == {128, 96, 64}
    assert table.attention[2] == table.mlp[128] == 0.0  # the dense widths are the reference
    assert table.mlp[64] <= table.mlp[96] <= 0.0 and table.attention[1] <= 0.0  # monotone, cuts never slower
    assert table.dense_s > 0 and table.block >= 0
    assert table.fastest_s(2) <= table.dense_s


# ------------------------------------------------------------------------------------- timed in llama.cpp


def _fake_llama_bench(monkeypatch, seen):
    """llama-bench stubbed: a file's seconds per token from its GGUF widths (1 ms per block, + 2 µs per MLP neuron,
    + 100 µs per key/value group, + 1 ns per vocabulary row), so the table's arithmetic can be checked exactly."""
    from prunekit.export.gguf import read_gguf_hparams

    def fake(files, *, tokens, repeats, threads):
        out = {}
        for name, path in files.items():
            h = read_gguf_hparams(path)
            seen[name] = {**h, "path": path, "tokens": tokens, "repeats": repeats, "threads": threads}
            layers = h["block_count"]
            out[name] = (layers * (1e-3 + 2e-6 * h["feed_forward_length"] + 1e-4 * h["attention.head_count_kv"])
                         + 1e-9 * h["vocab_size"])
        return out

    monkeypatch.setattr("prunekit.shrink.latency.time_gguf", fake)
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")


def test_the_llama_cpp_table_writes_each_probe_as_gguf_in_a_temporary_folder_and_composes_its_timings(monkeypatch):
    from pathlib import Path

    seen = {}
    _fake_llama_bench(monkeypatch, seen)
    model = tiny_model("llama", layers=3, vocab_size=320)
    table = measure_table(model, [2, 1], [128, 64], tokens=3, repeats=2, probe_layers=4, engine="llama.cpp", quant="f16")
    assert sorted(seen) == ["attention-1", "base-2", "base-4", "dense-0", "mlp-64"]
    h = {n: (v["block_count"], v["feed_forward_length"], v["attention.head_count_kv"], v["vocab_size"]) for n, v in seen.items()}
    assert h["dense-0"] == (3, 128, 2, 320)  # the model itself, whole
    assert h["base-4"] == (4, 128, 2, 300) and h["base-2"] == (2, 128, 2, 300)  # probes: the stand-in tokenizer's 300
    assert h["attention-1"] == (4, 128, 1, 300) and h["mlp-64"] == (4, 64, 2, 300)
    assert all(v["tokens"] == 3 and v["repeats"] == 2 and v["threads"] == 1 for v in seen.values())
    assert not any(Path(v["path"]).exists() for v in seen.values())  # the temporary folder is gone
    # the stub's times are sums of a few float64 terms: the differences agree to float64 rounding (1e-12 s)
    assert table.dense_s == pytest.approx(3 * (1e-3 + 2e-6 * 128 + 2e-4) + 320e-9, abs=1e-12)
    assert table.block == pytest.approx(1e-3 + 2e-6 * 128 + 2e-4, abs=1e-12)
    assert table.attention == {2: 0.0, 1: pytest.approx(-1e-4, abs=1e-12)}
    assert table.mlp == {128: 0.0, 64: pytest.approx(-64 * 2e-6, abs=1e-12)}
    assert (table.engine, table.quant) == ("llama.cpp", "f16") and "GGUF f16" in table.notes[0]


def test_speed_in_llama_cpp_plans_shapes_from_the_llama_cpp_table(monkeypatch):
    from prunekit.shrink import shrink_layers_
    from prunekit.shrink.perlayer import layer_shapes_of

    _fake_llama_bench(monkeypatch, {})
    model = tiny_model("llama", layers=3, vocab_size=320)
    calib = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    report = shrink_layers_(model, "speed=1.1", calib, ("heads", "neurons"), speed_engine="llama.cpp")
    lat = report.latency
    assert lat["engine"] == "llama.cpp" and lat["quant"] == "q8_0" and lat["predicted_speedup"] >= 1.1
    assert "llama.cpp, GGUF q8_0, 1 thread" in str(report)
    s = layer_shapes_of(model)
    saved = sum((2e-6 * (128 - f) + 1e-4 * (2 - k)) for k, f in zip(s.kv_heads, s.ffn))
    assert lat["predicted_s"] == pytest.approx(lat["dense_s"] - saved, abs=1e-12)  # the stub's costs, exactly


def test_llama_cpp_not_built_or_a_bad_engine_is_one_clear_error_before_any_probe(monkeypatch):
    from prunekit.shrink.search_layers import check_layers

    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: None)
    built = []
    monkeypatch.setattr("prunekit.shrink.latency._probes", lambda *a, **k: built.append(1))
    model = tiny_model("llama", layers=2, vocab_size=320)
    with pytest.raises(FileNotFoundError, match="llama-bench, which is not built .*run 'make llama-cpp'"):
        measure_table(model, [1], [64], engine="llama.cpp")
    with pytest.raises(FileNotFoundError, match="make llama-cpp"):
        check_layers(model, "speed=1.5", speed_engine="llama.cpp")
    with pytest.raises(ValueError, match="one of transformers, llama.cpp"):
        measure_table(model, [1], [64], engine="vllm")
    with pytest.raises(ValueError, match="GGUF type applies to the llama.cpp engine"):
        measure_table(model, [1], [64], quant="q8_0")
    with pytest.raises(ValueError, match="target params=0.6 counts parameters"):
        check_layers(model, "params=0.6", speed_engine="llama.cpp")
    assert not built


def test_a_family_gguf_cannot_hold_is_refused_before_any_file(monkeypatch, tmp_path):
    seen = {}
    _fake_llama_bench(monkeypatch, seen)
    with pytest.raises(ValueError, match="GGUF export supports"):
        measure_table(tiny_model("gpt2", vocab_size=320), [1], [64], engine="llama.cpp")
    assert not seen


@pytest.mark.slow
@pytest.mark.skipif(__import__("prunekit.export.llama_cpp", fromlist=["x"]).llama_cpp_tool("llama-bench") is None,
                    reason="llama.cpp is not built: run 'make llama-cpp'")
def test_the_table_timed_in_llama_cpp_on_a_tiny_model():
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/prunekit-latency-*"))
    model = tiny_model("llama", layers=2, vocab_size=320)
    table = measure_table(model, [2, 1], [128, 96, 64], tokens=4, repeats=2, probe_layers=2, engine="llama.cpp")
    assert set(table.attention) == {2, 1} and set(table.mlp) == {128, 96, 64}
    assert table.attention[2] == table.mlp[128] == 0.0 and table.dense_s > 0 and table.block >= 0
    assert table.mlp[64] <= table.mlp[96] <= 0.0 and table.attention[1] <= 0.0  # monotone, cuts never slower
    assert table.engine == "llama.cpp" and table.quant == "q8_0"
    assert set(glob.glob(f"{tempfile.gettempdir()}/prunekit-latency-*")) == before  # nothing left behind


def test_a_k_quant_table_writes_f16_and_converts_each_file_with_llama_quantize(monkeypatch):
    import shutil

    from prunekit.export.llama_cpp import Quantized

    seen, quantized = {}, []
    _fake_llama_bench(monkeypatch, seen)

    def fake_quantize(src, dst, type_, threads=1):  # llama-quantize stubbed: the f16 file copied, two fallbacks said
        quantized.append((src.name, dst.name, type_))
        shutil.copyfile(src, dst)
        return Quantized(str(dst), type_, ["a", "b"], 0.0)

    monkeypatch.setattr("prunekit.export.llama_cpp.quantize_gguf", fake_quantize)
    model = tiny_model("llama", layers=3, vocab_size=320)
    table = measure_table(model, [2, 1], [128, 64], tokens=3, repeats=2, probe_layers=4, engine="llama.cpp",
                          quant="q4_k_m")
    assert sorted(quantized) == sorted((f"{n}-f16.gguf", f"{n}.gguf", "Q4_K_M") for n in seen)
    assert (table.quant, len(seen)) == ("Q4_K_M", 5) and "GGUF Q4_K_M" in table.notes[0]
    assert "2 tensor(s) of the dense model" in table.notes[1] and "(10 in all)" in table.notes[1]


def test_a_k_quant_needs_llama_quantize_and_a_known_name_and_makes_the_width_multiple_256(monkeypatch):
    from prunekit.shrink.latency import check_engine
    from prunekit.shrink.search_layers import check_layers

    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: None if name == "llama-quantize"
                        else "/bin/true")
    with pytest.raises(FileNotFoundError, match="Q4_K_M needs llama.cpp's llama-quantize .* run 'make llama-cpp'"):
        check_engine("llama.cpp", "q4_K_M")
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    assert check_engine("llama.cpp", "q6_k") == "Q6_K" and check_engine("llama.cpp", "q8_0") == "q8_0"
    with pytest.raises(ValueError, match="unknown K-quant 'q4_k_x'"):
        check_engine("llama.cpp", "q4_k_x")
    model = tiny_model("llama", layers=2, vocab_size=320)
    with pytest.raises(ValueError, match="width_multiple 32 leaves rows that Q4_K_M's 256-wide super-blocks"):
        check_layers(model, "speed=1.5", speed_engine="llama.cpp", speed_quant="Q4_K_M", width_multiple=32)
    # a given table: nothing timed; the default multiple follows the K-quant (this 64-wide model offers no cut)
    from prunekit.shrink.latency import LatencyTable

    table = LatencyTable(0.01, {2: 0.0}, {128: 0.0}, 1e-3, 2, 128, 1, 4, 2, 2, engine="llama.cpp", quant="Q4_K_M")
    with pytest.raises(ValueError, match="cannot be reached"):
        check_layers(model, "speed=1.5", speed_engine="llama.cpp", speed_quant="q4_k_m", latency=table)
    assert check_layers(model, "speed=1.0", speed_engine="llama.cpp", speed_quant="q4_k_m",
                        latency=table).width_multiple == 256


@pytest.mark.slow
@pytest.mark.skipif(__import__("prunekit.export.llama_cpp", fromlist=["x"]).llama_cpp_tool("llama-quantize") is None,
                    reason="llama.cpp's llama-quantize is not built: run 'make llama-cpp'")
def test_the_table_timed_in_llama_cpp_at_a_k_quant_on_a_tiny_model():
    # 64 wide: no row fills a 256-wide super-block, so llama-quantize writes every 2-D tensor in a fallback type
    model = tiny_model("llama", layers=2, vocab_size=320)
    table = measure_table(model, [2], [128, 64], tokens=4, repeats=2, probe_layers=2, engine="llama.cpp",
                          quant="q4_K_M")
    assert table.quant == "Q4_K_M" and set(table.mlp) == {128, 64} and table.mlp[64] <= 0.0 and table.dense_s > 0
    assert "fallback type" in table.notes[1] and "15 tensor(s) of the dense model" in table.notes[1]
