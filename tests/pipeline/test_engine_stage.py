"""The engine stage: a GGUF export measured in llama.cpp, its figures in the run's record, the store and the report's
engine plot; a stage list without a GGUF export, or without llama.cpp built, refused before anything loads; and
(marked, where llama.cpp is built) a real run on a tiny model."""

import pytest

import prunekit as pk
from prunekit.bench import Store
from prunekit.bench.report import ENGINE_SPEED, ENGINE_SPREAD, html_report, plots
from prunekit.export.llama_cpp import llama_cpp_tool
from prunekit.metrics.engine_speed import BenchRun, EnginePerplexity
from prunekit.pipeline import check_stages, parse_stage
from prunekit.recipe import Recipe

BUILT = llama_cpp_tool("llama-bench") is not None and llama_cpp_tool("llama-perplexity") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from prunekit.models.hf import tiny_model
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

    fast = tiny_tokenizer(bos_token="<eos>")
    return write_tiny_folder(tmp_path_factory.mktemp("tiny"), tiny_model("llama", vocab_size=len(fast)), fast)


def _recipe(tiny, tmp_path, engine: str) -> Recipe:
    return Recipe.from_yaml(
        f"name: eng\ntask: {{task: lm, model: {tiny / 'model'}, calibration: {{source: {tiny / 'texts'}, nsamples: 2, "
        f"seqlen: 16}}, evaluation: {{windows: 2}}}}\nbaseline: false\nmeasure: [perplexity, size]\nstages:\n"
        f"  - {{stage: prune, method: magnitude, sparsity: 0.5}}\n"
        f"  - {{stage: export, to: gguf, quant: f16, out: {tmp_path / 'pruned.gguf'}}}\n"
        f"  - {{stage: engine, {engine}}}\n")


def _stub_llama_cpp(monkeypatch):
    """llama.cpp "built" (every tool /bin/true) and its two measurements replaced by fixed figures: the model file
    decodes at 50 then 40 tokens/s, the baseline at 25 then 25 (paired ratios 2.0 and 1.6), prefill 10× that."""
    speeds = {"model": iter([50.0, 40.0]), "baseline": iter([25.0, 25.0])}

    def bench(path, **kw):
        decode = next(speeds["baseline" if str(path).endswith("base.gguf") else "model"])
        return BenchRun({"prefill": 10 * decode, "decode": decode}, wall_s=1.0, cpu_s=1.0, threads=kw["threads"])

    def ppl(path, text, **kw):
        assert open(text).read().strip()  # the held-out text was written for it
        return EnginePerplexity(12.5 if str(path).endswith("pruned.gguf") else 11.0, 0.25, kw["ctx"], kw["chunks"],
                                kw["threads"], 0.1)

    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    monkeypatch.setattr("prunekit.metrics.engine_speed.run_llama_bench", bench)
    monkeypatch.setattr("prunekit.metrics.engine_speed.llama_perplexity", ppl)


def test_the_engine_figures_land_in_the_store_and_the_report_plots_them(tiny, tmp_path, monkeypatch):
    _stub_llama_cpp(monkeypatch)
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + b"\0" * 28)  # only its magic is read: llama-bench and llama-perplexity are stubbed
    recipe = _recipe(tiny, tmp_path, f"baseline: {base}, rounds: 2, threads: 1, text: {tiny / 'texts'}, ctx: 16, "
                                     "chunks: 2")
    db = tmp_path / "r.db"
    (run,) = pk.bench.run(recipe, db=str(db), progress=False, say=lambda t: None)
    assert run.status == "ok", run.error
    with Store(db) as store:
        f = store.get(run.key).figures
    # medians of the two rounds: (50 + 40) / 2 = 45 tokens/s, spread = IQR / median of 20 and 25 ms per token
    assert f[ENGINE_SPEED] == pytest.approx(1000 / 22.5) and f["llama_cpp_baseline_decode_tokens_per_s"] == 25.0
    assert f[ENGINE_SPREAD] == pytest.approx(2.5 / 22.5)
    assert f["llama_cpp_prefill_tokens_per_s"] == pytest.approx(10000 / 22.5)
    assert f["llama_cpp_decode_speedup"] == pytest.approx(1.8) and f["llama_cpp_decode_speedup_iqr"] == pytest.approx(0.2)
    assert (f["llama_cpp_perplexity"], f["llama_cpp_baseline_perplexity"]) == (12.5, 11.0)
    assert f["llama_cpp_quant"] == "f16" and f["llama_cpp_threads"] == 1 and f["llama_cpp_rounds"] == 2
    assert f["llama_cpp_gguf_bytes"] == (tmp_path / "pruned.gguf").stat().st_size and f["perplexity"] > 1
    record = f["stages"][-1]
    assert record["stage"] == "engine" and record["file"] == str(tmp_path / "pruned.gguf")
    assert record["evaluation"]["source"] == str(tiny / "texts")
    titles = [title for title, _ in plots([run])]
    assert "perplexity vs decode tokens/s measured in llama.cpp" in titles
    page = html_report([run], "engine")
    assert "llama.cpp decode tok/s" in page and f"{f[ENGINE_SPEED]:.1f}" in page


def test_without_a_baseline_or_text_the_stage_measures_the_model_alone(tiny, tmp_path, monkeypatch):
    _stub_llama_cpp(monkeypatch)
    (run,) = pk.bench.run(_recipe(tiny, tmp_path, "rounds: 2, text: null"), db=str(tmp_path / "r.db"),
                          progress=False, say=lambda t: None)
    assert run.status == "ok", run.error
    f = run.figures
    assert f[ENGINE_SPEED] == pytest.approx(1000 / 22.5) and "llama_cpp_perplexity" not in f
    assert not any(k.startswith("llama_cpp_baseline") or "speedup" in k for k in f)


@pytest.mark.parametrize("stages,match", [
    ([{"stage": "engine"}], "no 'export' with 'to: gguf' comes before it"),
    ([{"stage": "engine"}, {"stage": "export", "to": "gguf", "out": "m.gguf"}], "comes before it"),
    ([{"stage": "export", "to": "safetensors", "out": "m"}, {"stage": "engine"}], "comes before it"),
])
def test_an_engine_stage_without_a_gguf_export_before_it_is_refused_before_loading(stages, match, monkeypatch):
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    with pytest.raises(ValueError, match=match):
        check_stages([parse_stage(s) for s in stages], calibrated=True)


def test_without_llama_cpp_or_with_a_bad_baseline_the_stage_is_refused_before_loading(tmp_path, monkeypatch):
    stages = [parse_stage({"stage": "export", "to": "gguf", "out": str(tmp_path / "m.gguf")})]
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llama-bench and llama-perplexity, which are not built .*make llama-cpp"):
        check_stages([*stages, parse_stage({"stage": "engine"})], calibrated=True)
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    not_gguf = tmp_path / "dense.gguf"
    not_gguf.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        check_stages([*stages, parse_stage({"stage": "engine", "baseline": str(not_gguf)})], calibrated=True)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + b"\0" * 28)
    with pytest.raises(ValueError, match="is the file the export stage writes"):
        check_stages([*stages, parse_stage({"stage": "engine", "baseline": str(tmp_path / "m.gguf")})], calibrated=True)
    with pytest.raises(ValueError, match="rounds"):
        parse_stage({"stage": "engine", "rounds": 1})


@pytest.mark.slow
@pytest.mark.skipif(not BUILT, reason="llama.cpp is not built: run 'make llama-cpp'")
def test_a_recipe_measures_a_tiny_model_in_llama_cpp_for_real(tiny, tmp_path):
    recipe = _recipe(tiny, tmp_path, f"rounds: 2, prompt_tokens: 8, gen_tokens: 4, text: {tiny / 'texts'}, ctx: 32, "
                                     "chunks: 2")
    (run,) = pk.bench.run(recipe, db=str(tmp_path / "r.db"), progress=False, say=lambda t: None)
    assert run.status == "ok", run.error
    f = run.figures
    assert f[ENGINE_SPEED] > 0 and f["llama_cpp_prefill_tokens_per_s"] > 0 and f[ENGINE_SPREAD] >= 0
    assert f["llama_cpp_perplexity"] > 1 and f["llama_cpp_quant"] == "f16" and "llama.cpp" in f["llama_cpp_engine"]
    assert "perplexity vs decode tokens/s measured in llama.cpp" in [t for t, _ in plots([run])]
