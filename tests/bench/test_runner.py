"""Running recipes: every run stored, reruns skipped, a killed sweep resumed."""

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import prunekit as pk
from prunekit.bench import Store
from prunekit.recipe import Recipe

RECIPE = """name: tiny
task: {task: classify, model: mlp, data: digits, epochs: 3, lr: 0.1, batch_size: 64, test_size: 200}
stages:
  - {stage: prune, method: magnitude, sparsity: 0.5, allocation: global}
  - {stage: finetune, epochs: 0.5}
sweep:
  prune.sparsity: [0.5, 0.9]
measure: [accuracy, size, macs, layers]
"""


def test_run_stores_every_run_and_skips_them_the_second_time(tmp_path):
    db = tmp_path / "r.db"
    recipe = Recipe.from_yaml(RECIPE)
    runs = pk.bench.run(recipe, db=str(db), progress=False, say=lambda t: None)
    assert [r.label for r in runs] == ["dense", "prune(magnitude, 0.5, global) → finetune",
                                       "prune(magnitude, 0.9, global) → finetune"]
    assert all(r.status == "ok" for r in runs)
    dense, half, most = (r.figures for r in runs)
    assert dense["scope_sparsity"] == 0 and half["scope_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert most["nonzeros"] < half["nonzeros"] < dense["nonzeros"]
    assert most["effective_macs"] < dense["effective_macs"]
    assert 0.1 < most["accuracy"] <= 1 and "prune_cpu_seconds" in most and most["layers"]
    card = runs[1].protocol
    assert card["data"]["train_indices_hash"] and card["versions"]["torch"] and card["machine"]["threads"] >= 1
    again = pk.bench.run(recipe, db=str(db), progress=False, say=lambda t: None)
    assert [(a.key, a.started) for a in again] == [(a.key, a.started) for a in runs]  # skipped, not rerun
    forced = pk.bench.run(recipe, db=str(db), force=True, progress=False, say=lambda t: None)
    assert forced[1].started > runs[1].started


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    text = RECIPE.replace("prune.sparsity: [0.5, 0.9]", "prune.method: [magnitude, synflow]")
    runs = pk.bench.run(Recipe.from_yaml(text.replace("measure:", "seeds: [0]\nmeasure:")), db=str(tmp_path / "r.db"),
                        progress=False, say=lambda t: None)
    assert [r.status for r in runs] == ["ok", "ok", "ok"]


@pytest.mark.slow  # a subprocess sweep killed mid-way (tens of seconds): the fast tests cover its two halves, a
# rerun skipping stored runs (test_run_stores_every_run_and_skips_them_the_second_time) and a killed writer
# leaving no half row (tests/bench/test_store.py::test_a_killed_writer_leaves_no_half_row)
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    db, path = tmp_path / "r.db", tmp_path / "tiny.yaml"
    path.write_text(RECIPE.replace("[0.5, 0.9]", "[0.5, 0.7, 0.8, 0.9]"))
    cmd = [sys.executable, "-m", "prunekit.cli", "run", str(path), "--db", str(db), "--quiet"]
    code = "import sys; from prunekit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *cmd[3:]])
    deadline = time.time() + 240
    while time.time() < deadline:
        if db.exists():
            try:
                n = sqlite3.connect(db).execute("SELECT count(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 2:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        done = {r.key: r.started for r in s.runs()}
    assert 2 <= len(done) < 5
    runs = pk.bench.run(Recipe.from_yaml(path), db=str(db), progress=False, say=lambda t: None)
    assert len(runs) == 5 and all(r.status == "ok" for r in runs)
    assert all(done[r.key] == r.started for r in runs if r.key in done)  # the finished ones were not rerun
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_recipe_exports_each_run_and_a_classifier_export_is_a_failed_run_not_a_crash(tmp_path):
    from transformers import AutoModelForCausalLM

    from prunekit.models.hf import tiny_model
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

    fast = tiny_tokenizer()
    tiny = write_tiny_folder(tmp_path / "tiny", tiny_model("llama", vocab_size=fast.vocab_size), fast)
    out = tmp_path / "exported"
    recipe = Recipe.from_yaml(
        f"name: exp\ntask: {{task: lm, model: {tiny / 'model'}, calibration: {{source: {tiny / 'texts'}, nsamples: 2, "
        f"seqlen: 16}}, evaluation: {{windows: 2}}}}\nbaseline: false\nmeasure: [perplexity, size]\nstages:\n"
        f"  - {{stage: prune, method: magnitude, sparsity: 0.5}}\n  - {{stage: export, to: safetensors, out: {out}}}\n")
    (run,) = pk.bench.run(recipe, db=str(tmp_path / "r.db"), progress=False, say=lambda t: None)
    assert run.status == "ok", run.error
    record = run.figures["stages"][-1]
    assert record["stage"] == "export" and record["path"] == str(out) and record["bytes"] > 0
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight
    assert float((w == 0).float().mean()) == 0.5
    cls = Recipe.from_yaml(RECIPE.replace("  - {stage: finetune, epochs: 0.5}\n",
                                          f"  - {{stage: export, to: safetensors, out: {tmp_path / 'cls'}}}\n")
                           .replace("  prune.sparsity: [0.5, 0.9]\n", "  prune.sparsity: [0.5]\n"))
    runs = pk.bench.run(cls, db=str(tmp_path / "c.db"), progress=False, say=lambda t: None)
    assert runs[-1].status == "failed" and "has none" in runs[-1].error and not (tmp_path / "cls").exists()


def test_a_recipe_measures_a_fastv_token_stage_and_refuses_its_perplexity_before_loading(tmp_path):
    from prunekit.core.config import ConfigError
    from prunekit.models.hf import tiny_model
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

    fast = tiny_tokenizer()
    tiny = write_tiny_folder(tmp_path / "tiny", tiny_model("llama", vocab_size=fast.vocab_size), fast)
    text = (f"name: tok\ntask: {{task: lm, model: {tiny / 'model'}, calibration: {{source: {tiny / 'texts'}, "
            f"nsamples: 2, seqlen: 16}}, evaluation: {{windows: 2}}, gen_tokens: 4}}\nbaseline: false\nMEASURE\n"
            f"stages:\n  - {{stage: tokens, method: fastv, keep: 0.5, layer: 1}}\n")
    with pytest.raises(ConfigError, match=r"<recipe>:\d+: measure: perplexity is not defined .* FastV"):
        Recipe.from_yaml(text.replace("MEASURE\n", ""))  # the default measurements include perplexity
    recipe = Recipe.from_yaml(text.replace("MEASURE", "measure: [generation, size]"))
    (run,) = pk.bench.run(recipe, db=str(tmp_path / "r.db"), progress=False, say=lambda t: None)
    assert run.status == "ok", run.error
    record = run.figures["stages"][0]
    # 2 blocks: block 0 caches the whole prompt, block 1 half of it
    assert record["stage"] == "tokens" and record["kv_cache_fraction"] == 0.75
    assert run.figures["tokens_per_s"] > 0 and run.figures["params"] == run.figures["nonzeros"]
