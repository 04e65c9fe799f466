"""Calling a model the same way whatever it takes: a tensor, positional inputs, or keyword inputs."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on a tensor, a tuple of positional inputs, or a dict of keyword inputs."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensor(out: Any) -> Tensor:
    """The main tensor of a model's output (logits for Hugging Face outputs)."""
    if isinstance(out, Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, Mapping):
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find a tensor in a model output of type {type(out).__name__}")
