"""Adapt-Pruner's schedule: rounds cut a little each, train between cuts, and end at the budget with the same
training tokens as one cut followed by one training run."""

import math

import pytest
import torch

from prunekit.models.tiny import tiny_model
from prunekit.shrink.budget import non_embedding_params
from prunekit.shrink.distill import DistillConfig
from prunekit.shrink.schedule import AdaptConfig, adapt_shrink_, round_steps, round_targets


def test_round_targets_and_steps_add_up():
    assert round_targets(0.6, 4) == pytest.approx([0.9, 0.8, 0.7, 0.6]) and round_targets(0.6, 4)[-1] == 0.6
    assert round_steps(10, 4) == [3, 3, 2, 2] and sum(round_steps(40, 3)) == 40
    with pytest.raises(ValueError, match="cannot be split over 4 rounds"):
        round_steps(3, 4)


def test_the_schedule_cuts_in_rounds_to_the_budget_with_the_same_tokens():
    teacher = tiny_model("llama", layers=4, seed=0)
    model = tiny_model("llama", layers=4, seed=0)
    dense = non_embedding_params(model)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    kd = DistillConfig(steps=6, batch_size=2, seqlen=16, lr=1e-3)
    report = adapt_shrink_(model, teacher, "params=0.6", calib, windows, AdaptConfig(rounds=3, score_windows=2), kd)
    kept = [r["shrink"]["non_embedding_kept"] for r in report.rounds]
    assert len(kept) == 3 and kept[0] >= kept[1] >= kept[2]
    for r, share in zip(report.rounds, (0.8666, 0.7333, 0.6)):
        assert r["shrink"]["non_embedding_after"] <= math.floor(share * dense + 1)  # each round meets its own budget
    assert non_embedding_params(model) <= math.floor(0.6 * dense)
    assert report.tokens == kd.tokens == 6 * 2 * 16  # the same tokens as one cut + one run of kd.steps
    # the whole run, first round's before to last round's after, and its training as one run
    assert report.non_embedding_before == dense and report.non_embedding_after == non_embedding_params(model)
    assert report.non_embedding_kept == report.non_embedding_after / dense == pytest.approx(kept[-1])
    assert report.after["intermediate_size"] == [layer.mlp.up_proj.out_features for layer in model.model.layers]
    trained = report.distill()
    assert trained["steps"] == 6 and trained["tokens"] == 6 * 2 * 16 and trained["rounds"] == 3
    assert trained["seconds"] == pytest.approx(sum(r["distill"]["seconds"] for r in report.rounds))
    assert "non-embedding parameters" in str(report) and report.to_dict()["schedule"] == "adapt"


def test_bad_schedules_change_nothing():
    model = tiny_model("llama", layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(0, 128, (4, 16))
    with pytest.raises(ValueError, match="cannot be reached"):
        adapt_shrink_(model, model, "params=0.05", calib, calib, AdaptConfig(rounds=2), DistillConfig(steps=2))
    with pytest.raises(ValueError, match="speed= is measured"):
        adapt_shrink_(model, model, "speed=1.5", calib, calib)
    with pytest.raises(ValueError, match="cannot be split"):
        adapt_shrink_(model, model, "params=0.6", calib, calib, AdaptConfig(rounds=4), DistillConfig(steps=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
