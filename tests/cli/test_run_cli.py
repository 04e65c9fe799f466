"""prunekit run / results / report on a tiny recipe."""

import json

import pytest

from prunekit.cli import main

RECIPE = """name: tiny-cli
task: {task: classify, model: mlp, data: digits, epochs: 2, lr: 0.1, batch_size: 64, test_size: 100}
stages:
  - {stage: prune, method: magnitude, sparsity: 0.5}
sweep:
  prune.sparsity: [0.5, 0.8]
measure: [accuracy, size]
"""


def test_run_results_report(tmp_path, capsys):
    recipe, db = tmp_path / "r.yaml", tmp_path / "r.db"
    recipe.write_text(RECIPE)
    assert main(["run", str(recipe), "--db", str(db), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["stored"] for r in plan["runs"]] == [False, False, False]
    assert main(["run", str(recipe), "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in out["runs"]] == ["ok", "ok", "ok"]
    assert main(["results", "--db", str(db), "--where", "sparsity=0.8", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["runs"]
    assert len(found) == 1 and found[0]["figures"]["scope_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert main(["report", "--db", str(db), "--markdown"]) == 0
    assert "| prune(magnitude, 0.8) |" in capsys.readouterr().out
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(page), "--quiet"]) == 0
    assert page.read_text().count("<tr class='run'>") == 3


def test_a_bad_recipe_fails_before_anything_runs(tmp_path, capsys):
    recipe, db = tmp_path / "r.yaml", tmp_path / "r.db"
    recipe.write_text(RECIPE.replace("sparsity: 0.5}", "sparsty: 0.5}"))
    assert main(["run", str(recipe), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:4: stages.0.sparsty: unknown option 'sparsty'" in err and not db.exists()


def test_results_without_a_store(tmp_path, capsys):
    assert main(["results", "--db", str(tmp_path / "none.db")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_a_changed_calibration_or_evaluation_text_changes_the_run_keys(tiny_folder, tmp_path, capsys):
    calib, ev = tmp_path / "calib.txt", tmp_path / "eval.txt"
    calib.write_text("one paragraph.\n\nanother one.\n")
    ev.write_text("held out.\n\nand more.\n")
    recipe = tmp_path / "lm.yaml"
    recipe.write_text(f"name: lm\ntask: {{task: lm, model: {tiny_folder / 'model'}, calibration: {{source: {calib}}}, "
                      f"evaluation: {{source: {ev}}}}}\nstages:\n  - {{stage: prune, method: magnitude, sparsity: 0.5}}\n")

    def keys():
        assert main(["run", str(recipe), "--db", str(tmp_path / "r.db"), "--dry-run", "--json"]) == 0
        return [r["key"] for r in json.loads(capsys.readouterr().out)["runs"]]

    first = keys()
    assert keys() == first  # the same texts: the same keys (stored runs are reused)
    calib.write_text("one paragraph, edited.\n\nanother one.\n")
    second = keys()
    assert not set(second) & set(first)
    ev.write_text("held out, edited.\n\nand more.\n")
    assert not set(keys()) & set(second)
