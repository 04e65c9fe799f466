"""Small models and data for the training tests: scikit-learn's digits and a two-layer MLP."""

import pytest
import torch

from prunekit.datasets import load_digits
from prunekit.models.reference import MLP


@pytest.fixture(scope="session")
def digits_train():
    return load_digits("train")


@pytest.fixture(scope="session")
def digits_test():
    return load_digits("test")


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(hidden=(64, 32))

