"""benchmarks/diffusion_sparsity_sweep.py's rules, on hand-made curves: where quality stops being kept, whether the
next level collapses, and whether magnitude beats the data-aware score (paired over seeds, 2 standard errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import diffusion_sparsity_sweep

    return diffusion_sparsity_sweep


def _results(curves: dict[str, dict[float, list[float]]], dense: list[float]) -> dict:
    runs = [{"seed": seed, "method": m, "sparsity": s, "quality": {"fid": f}}
            for m, curve in curves.items() for s, fs in curve.items() for seed, f in enumerate(fs)]
    return {"dense": {seed: {"fid": f} for seed, f in enumerate(dense)}, "runs": runs}


def test_a_knee_after_a_free_stretch_is_a_threshold_and_a_collapse(sweep):
    dense = [20.0, 21.0, 22.0]
    # within 10% of 21 up to 0.2 (22.0 → +1.0 rise), then +10 on every seed at 0.3: above 2 SE and 3 × 1.0
    v = sweep.verdicts(_results({"magnitude": {0.1: [20.5, 21.5, 22.5], 0.2: [21.0, 22.0, 23.0],
                                               0.3: [30.0, 32.5, 33.0]}}, dense), free=0.10)
    m = v["magnitude"]
    assert m["threshold"] == 0.2
    assert m["relative_fid"]["0.2"] == pytest.approx(22.0 / 21.0 - 1)
    assert m["collapse"]["next"] == 0.3
    assert m["collapse"]["jump"]["diffs"] == pytest.approx([9.0, 10.5, 10.0])
    assert m["collapse"]["held"] is True


def test_a_steady_climb_is_no_collapse_and_no_free_level_is_no_threshold(sweep):
    dense = [20.0, 20.0, 20.0]
    # free at 0.1 (+1.5), then +2 per level: the jump (2.0) is not 3 × the 1.5 rise
    steady = {0.1: [21.5, 21.4, 21.6], 0.2: [23.5, 23.4, 23.6], 0.3: [25.5, 25.4, 25.6]}
    bad = {0.1: [30.0, 31.0, 32.0], 0.2: [40.0, 41.0, 42.0]}
    v = sweep.verdicts(_results({"magnitude": steady, "random": bad}, dense), free=0.10)
    assert v["magnitude"]["threshold"] == 0.1 and v["magnitude"]["collapse"]["held"] is False
    assert v["random"]["threshold"] is None
    assert v["random"]["collapse"] == {"held": False, "why": "no level keeps quality"}


def test_magnitude_beats_taylor_only_when_ahead_by_the_rule_and_never_behind(sweep):
    dense = [20.0, 20.0, 20.0]
    mag = {0.1: [21.0, 22.0, 23.0], 0.2: [30.0, 31.0, 32.0]}
    ahead = {0.1: [25.0, 26.5, 27.0], 0.2: [30.5, 30.0, 33.0]}  # +4.0/+4.5/+4.0 held at 0.1; 0.2 within noise
    v = sweep.verdicts(_results({"magnitude": mag, "taylor": ahead}, dense), free=0.10)["magnitude_vs_taylor"]
    assert (v["magnitude_ahead"], v["taylor_ahead"], v["held"]) == (1, 0, True)
    behind = {0.1: [25.0, 26.5, 27.0], 0.2: [20.0, 21.5, 22.0]}  # ahead at 0.1, behind by the rule at 0.2
    v = sweep.verdicts(_results({"magnitude": mag, "taylor": behind}, dense), free=0.10)["magnitude_vs_taylor"]
    assert (v["magnitude_ahead"], v["taylor_ahead"], v["held"]) == (1, 1, False)


def test_per_seed_files_merge_into_one_with_the_verdicts_over_every_finished_seed(sweep, tmp_path):
    import json

    curves = {"magnitude": {0.1: [20.5, 21.5, 22.5], 0.2: [21.0, 22.0, 23.0], 0.3: [30.0, 32.5, 33.0]}}
    full = _results(curves, [20.0, 21.0, 22.0])
    common = {"weights_sha256": "abc", "n": 10, "ddim_steps": 2, "floors": {"fid": 1.0}, "args": {"seeds": [0, 1, 2]}}
    first = {**common, "dense": {k: v for k, v in full["dense"].items() if k < 2},
             "runs": [r for r in full["runs"] if r["seed"] < 2]}
    first["dense"][2] = full["dense"][2]  # seed 2 started in this file but did not finish: not taken from it
    first["runs"] += [r for r in full["runs"] if r["seed"] == 2 and r["sparsity"] == 0.1]
    second = {**common, "dense": {2: full["dense"][2]}, "runs": [r for r in full["runs"] if r["seed"] == 2]}
    paths = []
    for i, d in enumerate((first, second)):
        paths.append(tmp_path / f"p{i}.json")
        paths[-1].write_text(json.dumps(d))
    out = tmp_path / "m.json"
    assert sweep.main(["--merge", *map(str, paths), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["args"]["seeds"] == [0, 1, 2] and len(merged["runs"]) == 9
    assert merged["verdicts"] == json.loads(json.dumps(sweep.verdicts(full, 0.10)))
    other = {**second, "n": 20}
    paths[1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another model or protocol"):
        sweep.main(["--merge", *map(str, paths), "--out", str(out)])


def test_merging_a_file_that_does_not_exist_is_one_line(sweep, tmp_path):
    with pytest.raises(SystemExit, match="no results file .*missing.json; run each seed first"):
        sweep.main(["--merge", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m.json")])
    assert not (tmp_path / "m.json").exists()
