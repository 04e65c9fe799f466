"""Shared test set-up: one thread per test process (the suite runs on 2 workers), fixed seeds, timings capped
at a second (PRUNEKIT_TIMING_BUDGET_S), and torchvision importable beside the CPU torch (transformers imports it)."""

import os

import pytest
import torch

import prunekit  # noqa: F401  (installs the torchvision guard before any test imports transformers)

torch.set_num_threads(1)

# Speed figures of tiny models only need to exist in tests: every timing stops after its minimum rounds once a
# second has passed, instead of spending up to 20 s (30 s for generation) per measurement on a busy machine.
# Tests of the timing itself unset it (monkeypatch.delenv). Subprocesses of the tests inherit it.
os.environ.setdefault("PRUNEKIT_TIMING_BUDGET_S", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
