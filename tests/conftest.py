"""Shared test set-up: one thread per test process (the suite runs on 2 workers), fixed seeds."""

import sys
import types

# torchvision's PyPI build is a CUDA build whose C ops do not load beside the CPU torch; transformers
# imports it (image utils), so stub the registrations module before anything imports torchvision.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
