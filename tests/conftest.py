"""Shared test set-up: one thread per test process (the suite runs on 2 workers), fixed seeds, and
torchvision importable beside the CPU torch (transformers imports it)."""

import pytest
import torch

from prunekit.models.compat import ensure_torchvision_importable

torch.set_num_threads(1)
ensure_torchvision_importable()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
