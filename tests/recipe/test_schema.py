"""Recipes: parsing, sweep expansion, and errors that name the file, the line and the field."""

import pytest

from prunekit.core.config import ConfigError
from prunekit.methods import MagnitudeConfig
from prunekit.recipe import Recipe

TEXT = """name: t
task: {task: classify, model: mlp, data: digits, epochs: 0.5}
stages:
  - stage: prune
    method: magnitude
    sparsity: 0.5
    allocation: global
  - stage: finetune
    epochs: 0.1
sweep:
  prune.sparsity: [0.5, 0.9]
  prune.method: [magnitude, random]
seeds: [0, 1]
"""


def test_a_recipe_expands_into_typed_runs():
    r = Recipe.from_yaml(TEXT)
    runs = r.runs()
    assert len(runs) == 2 * (1 + 4)  # per seed: the baseline and the 2×2 sweep
    first = runs[1]
    kind, cfg = first.stages[0]
    assert kind == "prune" and isinstance(cfg, MagnitudeConfig) and cfg.sparsity == 0.5 and cfg.seed == 0
    assert runs[6].stages[0][1].seed == 1  # the run's seed reaches the stage
    assert first.label == "prune(magnitude, 0.5, global) → finetune"
    assert len({x.config_hash() for x in runs}) == len(runs)


def test_a_recipe_round_trips_through_yaml():
    r = Recipe.from_yaml(TEXT)
    assert Recipe.from_yaml(r.to_yaml()) == r


@pytest.mark.parametrize("edit, match", [
    (("allocation: global", "alocation: global"), r"<recipe>:7: stages\.0\.alocation: unknown option 'alocation' \(did you mean 'allocation'"),
    (("[0.5, 0.9]", "[0.5, 1.5]"), r":6: stages\.0\.sparsity: sparsity must be a number in \[0, 1\), got 1\.5 \(at prune\.sparsity=1\.5"),
    (("epochs: 0.5}", "epochs: -1}"), r":2: task\.epochs: Input should be greater than 0"),
    (("seeds: [0, 1]", "seeds: [0, 1]\nfoo: 1"), r":14: foo: unknown key 'foo'"),
    (("stage: finetune", "stage: finetun"), r"unknown stage 'finetun' \(did you mean 'finetune'\?\)"),
    (("prune.method:", "prun.method:"), r"sweep key 'prun.method': no stage 'prun'"),
    (("[magnitude, random]", "[magnitude, wandaa]"), r"unknown method 'wandaa'"),
    (("epochs: 0.1", "epochs: many"), r":9: stages\.1\.epochs: Input should be a valid number"),
])
def test_bad_recipes_name_the_line_and_the_field(edit, match):
    with pytest.raises(ConfigError, match=match):
        Recipe.from_yaml(TEXT.replace(*edit))


def test_a_recipe_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TEXT.replace("allocation: global", "allocation: 3"))
    with pytest.raises(ConfigError, match=rf"{path}:\d+: stages\.0"):
        Recipe.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.from_yaml(path)


def test_the_python_object_is_the_same_recipe():
    r = Recipe(name="t", task={"task": "classify", "model": "mlp", "data": "digits"},
               stages=[{"stage": "prune", "method": "magnitude", "sparsity": 0.5}], seeds=[0])
    assert [s.label for s in r.runs()] == ["dense", "prune(magnitude, 0.5)"]
    with pytest.raises(ValueError, match="unknown measurement"):
        Recipe(name="t", task={"task": "classify"}, measure=["perplexity"])


def test_shipped_recipes_parse():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "recipes"
    files = sorted(folder.glob("*.yaml"))
    assert files, "recipes/ ships recipes"
    for f in files:
        assert Recipe.from_yaml(f).runs()


@pytest.mark.parametrize("text, line, key", [
    (TEXT.replace("    sparsity: 0.5\n", "    sparsity: 0.5\n    sparsity: 0.9\n"), 7, "stages.0.sparsity"),
    (TEXT + "seeds: [3]\n", 14, "seeds"),
])
def test_a_duplicated_key_is_an_error_naming_the_file_and_line(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup.yaml: line {line}: key '{key}' appears twice \(first on line "):
        Recipe.from_yaml(path)


def test_a_stage_of_the_task_is_refused_in_a_recipe():
    with pytest.raises(ConfigError, match="stage 'load' is the task's part in a recipe"):
        Recipe.from_yaml(TEXT.replace("  - stage: finetune\n    epochs: 0.1\n", "  - stage: load\n"))
