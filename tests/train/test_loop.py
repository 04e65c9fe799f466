import pytest
import torch

from prunekit.metrics.accuracy import accuracy
from prunekit.train import fit, steps_per_run


def test_fit_learns_and_calls_on_step(mlp, digits_train, digits_test):
    seen = []
    losses = fit(mlp, digits_train, epochs=3, lr=0.1, batch_size=32, progress=False, on_step=seen.append)
    assert len(losses) == steps_per_run(digits_train, epochs=3, batch_size=32) == len(seen)
    assert seen == list(range(1, len(losses) + 1))
    assert accuracy(mlp, digits_test) > 0.9


def test_fit_trains_only_the_given_parameters(mlp, digits_train):
    before = mlp.body[0].weight.detach().clone()
    fit(mlp, digits_train, epochs=0.5, progress=False, parameters=[mlp.head.bias])
    assert torch.equal(before, mlp.body[0].weight)


def test_steps_per_run_rejects_a_too_small_set(digits_train):
    with pytest.raises(ValueError, match="fewer than one batch"):
        steps_per_run(digits_train, batch_size=10_000)


def test_fit_rejects_a_batch_larger_than_the_data(mlp, digits_train):
    small = torch.utils.data.Subset(digits_train, range(10))
    with pytest.raises(ValueError, match="batch_size 64 is larger than the data"):
        fit(mlp, small, batch_size=64, progress=False)
