"""Generation speed: tokens per second of a short greedy generation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_PROMPT = "The Python standard library provides"


@dataclass
class GenerationSpeed:
    """How many new tokens a greedy generation produced, in how many seconds, and the text."""

    tokens: int
    seconds: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def generation_speed(model: nn.Module, tokenizer, prompt: str = DEFAULT_PROMPT, new_tokens: int = 32,
                     warmup: int = 2) -> GenerationSpeed:
    """Time a greedy generation of ``new_tokens`` tokens after ``prompt`` (after ``warmup`` tokens' warm-up)."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be positive, got {new_tokens}")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if warmup:
                model.generate(ids, max_new_tokens=warmup, min_new_tokens=warmup, **kwargs)
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
            seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    new = out[0, ids.shape[1]:]
    return GenerationSpeed(int(new.numel()), seconds, tokenizer.decode(new, skip_special_tokens=True))
