"""benchmarks/diffusion_prune.py's insight verdicts on hand-made rows (which part of the UNet and which importance
hurt least, paired over seeds, 2 standard errors), their merge from per-seed files and their rows in the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def prune(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import diffusion_prune

    return diffusion_prune


def _rows(fids: dict[tuple[str, str], list[float]], seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    return [{"blocks": [part], "importance": imp, "seed": s, "macs_removed": 0.09, "quality": {"fid": f, "n": 10}}
            for (part, imp), fs in fids.items() for s, f in zip(seeds, fs)]


# down and up cost far more than the middle for every importance; in the down path l1 is below both others on
# every seed, in the middle diff-pruning is, in the up path the order changes from seed to seed
FIDS = {("down", "l1"): [82.0, 84.0, 83.0], ("down", "diff-pruning"): [110.0, 108.0, 105.0],
        ("down", "random"): [111.0, 98.0, 120.0],
        ("mid", "l1"): [42.0, 43.0, 42.5], ("mid", "diff-pruning"): [38.0, 39.0, 38.5],
        ("mid", "random"): [41.0, 42.0, 41.5],
        ("up", "l1"): [82.0, 83.0, 82.5], ("up", "diff-pruning"): [57.0, 91.0, 108.0],
        ("up", "random"): [98.0, 91.0, 80.0]}


def test_the_middle_costs_least_and_each_part_names_the_importance_below_both_others(prune):
    v = prune.insight_verdicts(_rows(FIDS))
    mid = v["middle_costs_least"]
    assert mid["verdict"] == "held"
    assert mid["pairs"]["down - mid, l1"]["diffs"] == pytest.approx([40.0, 41.0, 40.5])
    assert mid["pairs"]["up - mid, diff-pruning"]["diffs"] == pytest.approx([19.0, 52.0, 69.5])
    least = v["least_harmful_importance"]
    assert least["down"]["ahead"] == "l1"
    assert least["down"]["pairs"]["diff-pruning - l1"]["diffs"] == pytest.approx([28.0, 24.0, 22.0])
    assert least["mid"]["ahead"] == "diff-pruning"
    assert least["up"]["ahead"] is None  # diff-pruning 57 / 91 / 108: below l1 on one seed only
    assert least["up"]["pairs"]["l1 - diff-pruning"]["verdict"] == "not held"


def test_one_part_where_the_middle_is_not_cheaper_makes_the_claim_partly(prune):
    fids = {**FIDS, ("up", "random"): [40.0, 41.0, 40.0]}  # cheaper than the middle's random (41–42)
    v = prune.insight_verdicts(_rows(fids))
    assert v["middle_costs_least"]["pairs"]["up - mid, random"]["verdict"] == "not held"
    assert v["middle_costs_least"]["verdict"] == "partly"


def test_one_seed_is_not_tested_and_rows_that_failed_are_left_out(prune):
    rows = _rows({k: f[:1] for k, f in FIDS.items()}, seeds=(0,))
    rows.append({"blocks": ["mid"], "importance": "l1", "seed": 1, "error": "nothing to prune"})
    v = prune.insight_verdicts(rows)
    assert v["middle_costs_least"]["verdict"] == "not tested"
    assert v["middle_costs_least"]["pairs"]["down - mid, l1"]["seeds"] == [0]
    assert v["least_harmful_importance"]["down"]["ahead"] is None


def _seed_file(folder: Path, name: str, seed: int) -> None:
    rows = [r for r in _rows(FIDS) if r["seed"] == seed]
    folder.joinpath(name).write_text(json.dumps({
        "model": "m", "weights_sha256": "ab" * 32, "n": 10, "ddim_steps": 10, "floors": {"fid": 0.1},
        "runs": [], "base": {"params": 1, "macs_per_step": 1, "quality": {}}, "insights": rows}))


def test_per_seed_files_merge_with_the_verdicts_over_all_seeds_and_reach_the_store(prune, tmp_path, monkeypatch):
    for s in (0, 1, 2):
        _seed_file(tmp_path, f"ins_s{s}.json", s)
    assert prune.merge(tmp_path, ["ins_s0.json", "ins_s1.json", "ins_s2.json"], "ins.json") == 0
    merged = json.loads((tmp_path / "ins.json").read_text())
    assert len(merged["insights"]) == 27
    assert merged["insight_verdicts"]["middle_costs_least"]["verdict"] == "held"
    assert merged["insight_verdicts"]["least_harmful_importance"]["down"]["ahead"] == "l1"

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import diffusion_store

    db = tmp_path / "r.db"
    assert diffusion_store.store(str(db), "insights", tmp_path / "ins.json") == 27
    with sqlite3.connect(db) as con:
        n = con.execute("select count(*) from runs").fetchone()[0]
    assert n == 27


def test_merging_a_seed_file_that_does_not_exist_is_one_line_and_writes_nothing(prune, tmp_path):
    _seed_file(tmp_path, "ins_s0.json", 0)
    with pytest.raises(SystemExit, match="ins_s9.json not found"):
        prune.merge(tmp_path, ["ins_s0.json", "ins_s9.json"], "ins.json")
    assert not (tmp_path / "ins.json").exists()


def test_a_file_without_verdicts_is_refused_by_the_store(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import diffusion_store

    _seed_file(tmp_path, "ins_s0.json", 0)
    with pytest.raises(ValueError, match="--merge"):
        diffusion_store.insight_runs(tmp_path / "ins_s0.json")
