"""benchmarks/training_time_seeds.py: the training-time claims decided over seeds by the papers' rule, on
hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import training_time_seeds

    return training_time_seeds


def _run(tmp_path: Path, seed: int, acc: dict[str, tuple[float, float]], epochs: float = 5.0) -> Path:
    rows = [{"method": "dense", "sparsity": 0.0, "accuracy": 0.89}]
    for method, (a80, a95) in acc.items():
        for s, a in ((0.8, a80), (0.95, a95)):
            row = {"method": method, "sparsity": s, "accuracy": a}
            if method == "soup of 3":
                row["ingredients"] = [a - 0.001, a + 0.002, a]  # the soup sits below its best ingredient
            rows.append(row)
    path = tmp_path / f"s{seed}.json"
    path.write_text(json.dumps({"settings": {"seed": seed, "epochs": epochs, "json": str(path)}, "rows": rows}))
    return path


BASE = {"one-shot + fine-tune": (0.890, 0.880), "IMP rewind (3 rounds)": (0.895, 0.885),
        "IMP mask, random re-init": (0.870, 0.850), "GraNet": (0.891, 0.879), "random ERK (static)": (0.885, 0.860),
        "soup of 3": (0.892, 0.881)}


def test_each_claim_is_paired_per_sparsity_and_combined(seeds, tmp_path):
    # gradual ahead by 0.5 point at 80 % on every seed; at 95 % ahead on one seed, behind on two
    gradual = [(0.895, 0.882), (0.8951, 0.878), (0.8949, 0.879)]
    paths = [_run(tmp_path, s, {**BASE, "gradual": g}) for s, g in enumerate(gradual)]
    _, rows = seeds.load(paths)
    v = seeds.verdicts(rows)
    assert v["gradual beats one-shot + fine-tune (row 25)"]["verdict"] == "partly"
    by = v["gradual beats one-shot + fine-tune (row 25)"]["by_sparsity"]
    assert by["80%"]["diffs"] == [0.5, 0.51, 0.49] and by["80%"]["verdict"] == "held"
    assert by["95%"]["verdict"] == "not held"
    # the same difference on every seed has no spread: held (the mean is above 0 by more than 2 SE = 0)
    assert v["rewinding finds winning tickets (rows 3, 15)"]["verdict"] == "held"
    # ERK 0.5 point behind at 80 % (within the 1-point margin) and 2 points behind at 95 %
    assert v["random ERK is within 1 point of one-shot + fine-tune (row 40)"]["verdict"] == "partly"
    assert v["a soup of 3 beats its best ingredient (row 58)"]["verdict"] == "not held"
    assert v["a soup of 3 beats one fine-tuned model (row 58)"]["verdict"] == "held"


def test_runs_of_other_settings_are_refused_and_nothing_is_written(seeds, tmp_path):
    a = _run(tmp_path, 0, {**BASE, "gradual": (0.9, 0.9)})
    b = _run(tmp_path, 1, {**BASE, "gradual": (0.9, 0.9)}, epochs=3.0)
    out = tmp_path / "merged.json"
    with pytest.raises(SystemExit, match="other settings \\(epochs\\)"):
        seeds.main([str(a), str(b), "--out", str(out)])
    assert not out.exists()


def test_a_missing_file_is_one_line(seeds, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        seeds.main([str(tmp_path / "nope.json")])
