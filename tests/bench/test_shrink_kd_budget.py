"""benchmarks/shrink_kd_budget.py's helpers: the cut to a chosen grid shape, and the time of a chain of
continued distillations (each run counts every run it continued)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunekit.models.tiny import tiny_model
from prunekit.shrink import non_embedding_params, shape_of

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def kd(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import shrink_kd_budget

    return shrink_kd_budget


def _calib():
    return torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def test_the_grid_index_cuts_to_that_shape_of_the_grid(kd):
    model = tiny_model("llama", layers=4)
    before = non_embedding_params(model)
    cut = kd._cut_to_grid_shape(model, "params=0.6", _calib(), ["neurons", "depth"], 1)
    assert cut["grid_index"] == 1 and len(cut["grid"]) >= 2
    assert str(shape_of(model)) == cut["shape_after"] == cut["grid"][1]
    assert cut["non_embedding_kept"] == pytest.approx(non_embedding_params(model) / before)
    assert cut["non_embedding_kept"] <= 0.6


def test_an_index_past_the_grid_is_one_line_and_the_model_is_untouched(kd):
    model = tiny_model("llama", layers=4)
    shape = shape_of(model)
    with pytest.raises(SystemExit, match="--grid-index 99: the grid"):
        kd._cut_to_grid_shape(model, "params=0.6", _calib(), ["neurons"], 99)
    assert shape_of(model) == shape


def test_a_continued_run_counts_the_time_of_every_run_before_it(kd):
    first = {"spent": {"wall_s": 100.0, "cpu_s": 150.0}, "final": {"tokens": 1000}}
    assert kd._spent_total(first) == {"wall_s": 100.0, "cpu_s": 150.0}
    second = {"spent": {"wall_s": 40.0, "cpu_s": 30.0},
              "final": {"tokens": 500, "tokens_total": 1500, "wall_s_total": 140.0, "cpu_s_total": 180.0}}
    assert kd._spent_total(second) == {"wall_s": 140.0, "cpu_s": 180.0}
