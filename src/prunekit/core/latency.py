"""CPU latency: the median of repeated timed forward passes, after warm-up, under inference_mode."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .calling import call_model


@dataclass
class Latency:
    """Timings of one model on one input, in milliseconds."""

    median_ms: float
    min_ms: float
    runs: int
    threads: int


def latency(model: nn.Module, example_inputs: Any, *, runs: int = 20, warmup: int = 3, threads: int | None = 1,
            channels_last: bool = False) -> Latency:
    """Median wall time of ``runs`` forward passes of ``model`` on ``example_inputs`` after ``warmup``
    passes, in eval mode under ``torch.inference_mode``, with ``threads`` intra-op threads (restored
    after; ``None`` leaves torch's setting). ``channels_last`` times the model and a 4-D input in
    channels-last memory layout (the model is converted in place, and back afterwards)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads}")
    old_threads = torch.get_num_threads()
    was_training = model.training
    if threads is not None:
        torch.set_num_threads(threads)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() == 4:
            example_inputs = example_inputs.contiguous(memory_format=torch.channels_last)
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                call_model(model, example_inputs)
            for _ in range(runs):
                start = time.perf_counter()
                call_model(model, example_inputs)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
        torch.set_num_threads(old_threads)
    return Latency(statistics.median(times), min(times), runs, threads or old_threads)
