"""Shared test set-up: one thread per test process (the suite runs on 2 workers), fixed seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
