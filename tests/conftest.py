"""Shared test set-up: one thread per test process (the suite runs on 2 workers), fixed seeds."""

import pytest
import torch

import prunekit  # noqa: F401  (installs the torchvision guard before any test imports transformers)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
