"""Short names for the small reference networks, with the input shape each expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .reference import MLP, ResNetStyle, SmallCNN


@dataclass(frozen=True)
class ReferenceModel:
    """A reference network's constructor and the shape of one input example."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    about: str


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    "mlp": ReferenceModel(MLP, (64,), "MLP 64-128-64-10 for scikit-learn's 8x8 digits"),
    "small-cnn": ReferenceModel(SmallCNN, (1, 28, 28), "three-convolution CNN for Fashion-MNIST"),
    "resnet": ReferenceModel(ResNetStyle, (1, 28, 28), "ResNet-style CNN (widths 32/64/128) for Fashion-MNIST"),
}


def reference_model(name: str) -> ReferenceModel:
    """The reference network registered as ``name``."""
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; known: {', '.join(sorted(REFERENCE_MODELS))}")
    return REFERENCE_MODELS[name]
