"""The applications' minibatches: whole batches, a fresh seeded shuffle per pass, exactly the steps asked."""

import torch

from prunekit.apps.batches import minibatches, steps_of


def test_minibatches_cover_each_pass_once_and_stop_at_the_step_count():
    batches = list(minibatches(10, 3, 2.0, seed=0))  # 3 whole batches a pass, 2 passes
    assert len(batches) == steps_of(10, 3, 2.0) == 6
    g = torch.Generator().manual_seed(0)
    first, second = torch.randperm(10, generator=g), torch.randperm(10, generator=g)
    assert torch.equal(torch.cat(batches[:3]), first[:9]) and torch.equal(torch.cat(batches[3:]), second[:9])
    assert len(list(minibatches(10, 3, 0.5, seed=0))) == 2  # round(0.5 × 3)
    assert len(list(minibatches(10, 3, 0.01, seed=0))) == 1  # never zero steps


def test_fewer_examples_than_a_batch_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="at least one batch of 8"):
        next(minibatches(5, 8, 1.0, seed=0))
