"""The measured latency table: real timings of the model and its probes, monotone effects, and the speed= target
parsed with its range."""

import pytest

from prunekit.models.tiny import tiny_model
from prunekit.shrink.budget import Target, parse_target
from prunekit.shrink.latency import decode_seconds, measure_table


def test_speed_targets_parse_and_out_of_range_ones_are_refused():
    assert parse_target("speed=1.5") == Target("speed", 1.5)
    for bad in ("speed=0.5", "speed=inf", "speed=x"):
        with pytest.raises(ValueError, match="speed="):
            parse_target(bad)


def test_the_table_times_every_width_and_never_counts_a_narrower_module_slower():
    model = tiny_model("llama", layers=2)
    assert decode_seconds(model, tokens=2, repeats=1) > 0
    table = measure_table(model, [2, 1], [128, 96, 64], tokens=2, repeats=2, probe_layers=2)
    assert set(table.attention) == {2, 1} and set(table.mlp) == {128, 96, 64}
    assert table.attention[2] == table.mlp[128] == 0.0  # the dense widths are the reference
    assert table.mlp[64] <= table.mlp[96] <= 0.0 and table.attention[1] <= 0.0  # monotone, cuts never slower
    assert table.dense_s > 0 and table.block >= 0
    assert table.fastest_s(2) <= table.dense_s
