"""benchmarks/shrink_shapes_speed.py's shape list and table (the llama.cpp timing itself needs llama-bench)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def shapes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import shrink_shapes_speed

    return shrink_shapes_speed


def test_shapes_parse_to_axes_and_grid_index(shapes):
    assert shapes.parse_shapes("heads,neurons,depth:0; neurons,depth:2;neurons:0") == [
        (["heads", "neurons", "depth"], 0), (["neurons", "depth"], 2), (["neurons"], 0)]


@pytest.mark.parametrize("bad", ["neurons", "neurons:x", ":2", " ; "])
def test_a_malformed_shape_is_one_line(shapes, bad):
    with pytest.raises(SystemExit, match="AXES:K|empty"):
        shapes.parse_shapes(bad)


def test_the_table_prints_each_row_with_its_paired_speed_up(shapes):
    row = {"shape": "MLP 576, 30 blocks", "kept": 0.531, "quant": "f16", "bytes": 171_353_120,
           "prefill_tokens_per_s": 204.0, "prefill_spread": 0.08, "decode_tokens_per_s": 85.0, "decode_spread": 0.07,
           "decode_speedup": 1.71, "decode_speedup_iqr": 0.04, "prefill_speedup": 1.43}
    record = {"rows": [row], "args": {"rounds": 2, "threads": 1, "prompt_tokens": 16, "gen_tokens": 8},
              "load_before": [2.7], "load_after": [2.9], "cores": 2, "wall_s": 60.0}
    table = shapes.markdown(record)
    assert "| MLP 576, 30 blocks | 53.1% | f16 | 171.4 | 204 ±8% | 85.0 ±7% | 1.71× ±0.04 | 1.43× |" in table
    assert "2 interleaved llama-bench rounds" in table
