"""llama.cpp speed and perplexity: parsing llama-bench / llama-perplexity output, pairing interleaved rounds,
the checks before anything runs, and (marked, where llama.cpp is built) a real llama-bench run on a tiny GGUF."""

import json

import pytest

from prunekit.export.llama_cpp import llama_cpp_tool
from prunekit.metrics.engine_speed import (BenchRun, engine_speed, llama_perplexity, pair_rounds, parse_bench_json,
                                           parse_perplexity)


TEXT = "The interpreter reads a line, parses it and runs it. Modules group functions and classes. "


def _row(n_prompt, n_gen, ts, model="m.gguf"):
    return {"model_filename": model, "n_prompt": n_prompt, "n_gen": n_gen, "n_threads": 1, "avg_ts": ts,
            "samples_ts": [ts * 0.99, ts * 1.01], "avg_ns": 1, "model_size": 10}


def test_bench_json_gives_a_prefill_and_a_decode_row():
    rows = parse_bench_json(json.dumps([_row(128, 0, 900.5), _row(0, 32, 120.25)]))
    assert [(r.phase, r.tokens_per_s, r.n_prompt, r.n_gen) for r in rows] == [("prefill", 900.5, 128, 0),
                                                                              ("decode", 120.25, 0, 32)]
    assert rows[0].samples_ts == (900.5 * 0.99, 900.5 * 1.01)


def test_bench_output_that_is_not_what_was_asked_is_an_error():
    with pytest.raises(ValueError, match="printed no JSON"):
        parse_bench_json("error: failed to load model")
    with pytest.raises(ValueError, match="no test rows"):
        parse_bench_json("[]")
    with pytest.raises(ValueError, match="lacks 'avg_ts'"):
        parse_bench_json(json.dumps([{k: v for k, v in _row(1, 0, 1.0).items() if k != "avg_ts"}]))
    with pytest.raises(ValueError, match="mixes prefill and decode"):
        parse_bench_json(json.dumps([_row(16, 16, 1.0)]))


def _run(prefill, decode, cpu_share=1.0):
    return BenchRun({"prefill": prefill, "decode": decode}, wall_s=2.0, cpu_s=2.0 * cpu_share, threads=1)


def test_rounds_are_paired_per_round_and_timed_in_ms_per_token():
    # a machine that slows down in round 2 slows both files: the per-round ratio stays 2.0
    runs = {"dense": [_run(1000, 100), _run(500, 50), _run(1000, 100)],
            "shrunk": [_run(2000, 150), _run(1000, 75), _run(2000, 150)]}
    timings, speedups = pair_rounds(runs, threads=1)
    assert timings["dense"]["decode"].wall_ms == [10.0, 20.0, 10.0]
    assert speedups["shrunk"]["prefill"].values == [2.0, 2.0, 2.0]
    assert speedups["shrunk"]["decode"].median == pytest.approx(1.5) and speedups["shrunk"]["decode"].iqr == 0
    assert "dense" not in speedups
    # the unpaired medians differ from the paired ratio's when the rounds differ: 1000/10 vs 150/10 per token
    assert timings["shrunk"]["decode"].median_ms == pytest.approx(1000 / 150)


def test_a_process_that_did_not_get_its_cpu_is_flagged_busy():
    runs = {"a": [_run(100, 10, cpu_share=0.3)] * 3}
    timings, _ = pair_rounds(runs, threads=1, load=0.0)
    assert timings["a"]["decode"].noisy and "machine busy" in timings["a"]["decode"].reasons()[0]
    quiet, _ = pair_rounds({"a": [_run(100, 10)] * 3}, threads=1, load=0.0)
    assert not quiet["a"]["decode"].noisy
    loaded, _ = pair_rounds({"a": [_run(100, 10)] * 3}, threads=1, load=40.0)  # other work on every core
    assert loaded["a"]["decode"].busy_load


def test_perplexity_is_read_from_the_final_estimate():
    out = "perplexity: calculating ...\n[1]12.5,[2]11.9,\nFinal estimate: PPL = 11.3212 +/- 0.20478\n"
    assert parse_perplexity(out) == (11.3212, 0.20478)
    cut = "perplexity: calculating perplexity over 2 chunks, n_ctx=64\n[1]161.2536,[2]5909.5842,\n"
    ppl, err = parse_perplexity(cut)  # the final line lost at exit: the last running estimate is the final one
    assert ppl == 5909.5842 and err != err
    with pytest.raises(ValueError, match="no final estimate"):
        parse_perplexity("perplexity: calculating perplexity over 2 chunks, n_ctx=64\n[1]161.2536,\n")
    with pytest.raises(ValueError, match="no final estimate: .*too few tokens"):
        parse_perplexity("main: you need at least 1024 tokens\nerror: too few tokens")


def test_bad_files_and_settings_are_refused_before_anything_runs(tmp_path):
    not_gguf = tmp_path / "m.gguf"
    not_gguf.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        engine_speed({"m": not_gguf})
    with pytest.raises(FileNotFoundError, match="is not a file"):
        engine_speed({"m": tmp_path / "missing.gguf"})
    with pytest.raises(ValueError, match="rounds must be an integer of at least 2"):
        engine_speed({"m": not_gguf}, rounds=1)
    with pytest.raises(ValueError, match="at least one GGUF file"):
        engine_speed({})
    with pytest.raises(ValueError, match="is not a GGUF file"):
        llama_perplexity(not_gguf, tmp_path / "t.txt")


def test_without_the_tools_the_error_says_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_LLAMA_CPP", str(tmp_path / "nowhere"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(FileNotFoundError, match="llama-bench is not built .*make llama-cpp"):
        engine_speed({"m": f})


@pytest.mark.slow
@pytest.mark.skipif(llama_cpp_tool("llama-bench") is None or llama_cpp_tool("llama-perplexity") is None,
                    reason="llama.cpp is not built: run 'make llama-cpp'")
def test_llama_bench_measures_two_tiny_ggufs_interleaved(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prunekit.export import export
    from prunekit.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer(TEXT, bos_token="<eos>")
    files = {}
    for name, ff in (("wide", 256), ("narrow", 64)):
        files[name] = tmp_path / f"{name}.gguf"
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=ff, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             bos_token_id=0, eos_token_id=0, max_position_embeddings=256)
        export(AutoModelForCausalLM.from_config(config), tok, files[name], to="gguf", quant="f16")
    result = engine_speed(files, rounds=2, prompt_tokens=16, gen_tokens=4)
    d = result.to_dict()
    assert set(d["models"]) == {"wide", "narrow"} and d["rounds"] == 2 and d["threads"] == 1
    assert all(d["models"][n]["decode_tokens_per_s"] > 0 and d["models"][n]["prefill_tokens_per_s"] > 0 for n in files)
    assert len(d["speedups"]["narrow"]["decode"]["values"]) == 2 and "narrow" in str(result)
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 40)
    ppl = llama_perplexity(files["narrow"], text, ctx=32, chunks=2)
    # ± is NaN when llama.cpp lost its last lines and the running estimate stood in (a tiny model's run, always)
    assert ppl.perplexity > 1 and (ppl.stderr >= 0 or ppl.stderr != ppl.stderr)


def test_a_lost_last_chunk_is_read_from_a_run_one_chunk_longer(tmp_path, monkeypatch):
    # a tiny model's run ends at once and llama.cpp's log thread loses its last lines, the last chunk's running
    # estimate with them (seen every time here): the retry asks for one chunk more and reads the value after 2
    import subprocess

    asked = []

    def fake_run(cmd, **kw):
        n = int(cmd[cmd.index("--chunks") + 1])
        asked.append(n)
        shown = "".join(f"[{i}]{300.0 + i:.4f}," for i in range(1, n))  # every chunk but the last
        return subprocess.CompletedProcess(cmd, 0, f"calculating perplexity over {n} chunks, n_ctx=32\n{shown}\n", "")

    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    monkeypatch.setattr("prunekit.metrics.engine_speed.subprocess.run", fake_run)
    model, text = tmp_path / "m.gguf", tmp_path / "t.txt"
    model.write_bytes(b"GGUF" + b"\0" * 28)
    text.write_text(TEXT)
    ppl = llama_perplexity(model, text, ctx=32, chunks=2)
    assert asked == [2, 3] and ppl.perplexity == 302.0 and ppl.stderr != ppl.stderr and ppl.chunks == 2
    assert parse_perplexity("[1]5.0,[2]6.0,", after=1) == (5.0, pytest.approx(float("nan"), nan_ok=True))
    with pytest.raises(ValueError, match="no running estimate after chunk 3"):
        parse_perplexity("[1]5.0,[2]6.0,", after=3)
