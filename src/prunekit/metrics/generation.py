"""Generation speed: tokens per second of a greedy generation, timed with the interleaved routine of
:mod:`prunekit.infra.latency` (repeated, with its spread and a noisy flag), the prompt and token
counts stated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..infra.latency import Comparison, time_interleaved

DEFAULT_PROMPT = "The Python standard library provides"


@dataclass
class GenerationSpeed:
    """A greedy generation of ``tokens`` new tokens after a ``prompt_tokens``-token prompt: the median
    time over ``runs`` repeats, its interquartile range, and whether the figure can be trusted."""

    tokens: int
    seconds: float
    text: str
    prompt_tokens: int = 0
    runs: int = 1
    iqr_s: float = 0.0
    noisy: bool = False
    why: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def spread(self) -> float:
        """Interquartile range as a share of the median."""
        return self.iqr_s / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "seconds": self.seconds,
                "tokens_per_s": self.tokens_per_s, "runs": self.runs, "spread": self.spread, "noisy": self.noisy,
                "why": list(self.why)}


def _generate_fn(model: nn.Module, ids: torch.Tensor, new_tokens: int, pad: int | None, out: list):
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)

    def run() -> None:
        with torch.no_grad():
            out[:] = [model.generate(ids, **kwargs)]

    return run


def compare_generation(models: dict[str, nn.Module], tokenizer: Any, prompt: str = DEFAULT_PROMPT,
                       new_tokens: int = 32, *, warmup: int = 1, min_rounds: int = 3, max_rounds: int = 10,
                       budget_s: float = 30.0, threads: int | None = None) -> tuple[dict[str, GenerationSpeed], Comparison]:
    """Greedy generation speed of several models on the same prompt, timed interleaved (A B, B A, …)
    so that load changes hit all of them; returns each model's speed and the comparison (whose
    ``ratio("pruned", "dense")`` is the paired time ratio). ``tokenizer`` may be a dict of one tokenizer per
    model (models with different vocabularies, each given the prompt in its own ids)."""
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    if not models:
        raise ValueError("compare_generation needs at least one model")
    toks = tokenizer if isinstance(tokenizer, dict) else {n: tokenizer for n in models}
    outs: dict[str, list] = {n: [] for n in models}
    fns, modes, prompts = {}, {}, {}
    for name, model in models.items():
        tok = toks[name]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        ids = prompts[name] = tok(prompt, return_tensors="pt").input_ids.to(device)
        fns[name] = _generate_fn(model, ids, new_tokens, pad, outs[name])
        modes[name] = model.training
        model.eval()
    try:
        cmp = time_interleaved(fns, warmup=warmup, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s,
                               target_precision=0.03, threads=threads)
    finally:
        for name, model in models.items():
            model.train(modes[name])
    result = {}
    for name in models:
        t = cmp.timings[name]
        out = outs[name][0][0]
        ids = prompts[name]
        new = out[ids.shape[1]:]
        result[name] = GenerationSpeed(int(new.numel()), t.median_ms / 1e3, toks[name].decode(new, skip_special_tokens=True),
                                       int(ids.shape[1]), t.runs, t.iqr_ms / 1e3, t.noisy, t.reasons())
    return result, cmp


def generation_speed(model: nn.Module, tokenizer: Any, prompt: str = DEFAULT_PROMPT, new_tokens: int = 32,
                     warmup: int = 1, max_rounds: int = 5, budget_s: float = 20.0) -> GenerationSpeed:
    """Time a greedy generation of ``new_tokens`` tokens after ``prompt``, repeated (at least 3 times,
    at most ``max_rounds`` or ``budget_s`` seconds) after ``warmup`` generations."""
    speeds, _ = compare_generation({"model": model}, tokenizer, prompt, new_tokens, warmup=warmup,
                                   min_rounds=min(3, max_rounds), max_rounds=max_rounds, budget_s=budget_s)
    return speeds["model"]
