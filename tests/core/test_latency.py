"""The latency helper (prunekit.core.latency)."""

import pytest
import torch

from prunekit.core.latency import latency
from prunekit.models import SmallCNN


def test_latency_times_and_restores_threads_and_layout():
    model = SmallCNN(widths=(4, 8, 8)).train()
    threads = torch.get_num_threads()
    result = latency(model, torch.randn(2, 1, 28, 28), runs=3, warmup=1, threads=1, channels_last=True)
    assert result.runs == 3 and result.threads == 1 and 0 < result.min_ms <= result.median_ms
    assert torch.get_num_threads() == threads and model.training
    assert model.features[0].weight.is_contiguous()


def test_latency_rejects_bad_settings():
    with pytest.raises(ValueError, match="runs"):
        latency(SmallCNN(), torch.randn(1, 1, 28, 28), runs=0)
    with pytest.raises(ValueError, match="threads"):
        latency(SmallCNN(), torch.randn(1, 1, 28, 28), threads=0)
