"""What a language model costs and how well it does: perplexity, parameters, non-zeros, sizes, MACs,
and its speed — forward latency and greedy generation — timed with the interleaved routine of
:mod:`prunekit.infra.latency` (several models alternating in one process, repeated, with spread and a
``noisy`` flag). Used by ``prunekit prune`` and ``prunekit eval``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..infra.latency import Latency, compare_latency
from .generation import compare_generation

LATENCY_TOKENS = 128


def lm_figures(model: nn.Module, windows: Any, *, causal: bool = True, macs: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Perplexity over ``windows`` (causal LMs only), parameters, non-zeros, sparsity, dense and sparse
    byte sizes; with ``macs``, the MACs of a forward pass over 128 tokens. No timing."""
    from .summary import summary
    from .perplexity import perplexity

    s = summary(model, example_inputs=example_ids(model, 1) if macs else None)
    out: dict[str, Any] = {"params": s.params, "nonzeros": s.nonzeros, "sparsity": s.sparsity,
                           "dense_bytes": s.dense_bytes, "sparse_bytes": s.sparse_bytes, "perplexity": None}
    if macs:
        out["macs_128_tokens"] = s.macs
    if causal:
        out["perplexity"] = perplexity(model, windows, progress=progress)
    return out


def example_ids(model: nn.Module, batch: int, tokens: int = LATENCY_TOKENS) -> dict[str, torch.Tensor]:
    """A fixed random batch of token ids (seed 0) within the model's vocabulary."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000) or 1000)
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.repeat(batch, 1)}


def lm_speed(models: dict[str, nn.Module], tokenizer: Any, *, causal: bool = True, forward: bool = False,
             gen_tokens: int = 32, threads: int | None = None, budget_s: float = 20.0) -> dict[str, Any]:
    """Speed of one or several models, timed interleaved (``{"before": dense, "after": pruned}``):
    greedy generation of ``gen_tokens`` tokens (causal LMs) and, with ``forward``, the forward latency
    at batch 1 and batch 8 × 128 tokens. Returns ``{"models": {name: figures}, "ratios": {...},
    "timing": {...}}``; each figure carries its spread and ``noisy`` flag; with two or more models each
    ratio is paired (the median of per-round time ratios of the last model over the first) with its
    spread."""
    names = list(models)
    pair = (names[-1], names[0]) if len(names) > 1 else None
    per: dict[str, dict[str, Any]] = {n: {"tokens_per_s": None} for n in names}
    ratios: dict[str, Any] = {}
    reasons: dict[str, list[str]] = {}  # figure → every model's reasons to distrust it
    timing: dict[str, Any] = {"interleaved": len(names) > 1, "models": names, "threads": None}
    first = next(iter(models.values()))
    if forward:
        for batch, key in ((1, "batch1"), (8, "batch8")):
            cmp = compare_latency(models, example_ids(first, batch), warmup=1, max_rounds=30, budget_s=budget_s,
                                  threads=threads)
            timing["threads"] = cmp.threads
            for n in names:
                lat = Latency.from_timing(cmp.timings[n])
                per[n][f"latency_ms_{key}"] = lat.median_ms
                per[n][f"latency_{key}"] = lat.to_dict()
                reasons.setdefault(f"forward {key}", []).extend(lat.why)
            if pair:
                r = cmp.ratio(*pair)
                ratios[f"latency_{key}"] = {"median": r.median, "iqr": r.iqr, "of": "/".join(pair)}
    if causal:
        speeds, cmp = compare_generation(models, tokenizer, new_tokens=gen_tokens, budget_s=1.5 * budget_s,
                                         threads=threads)
        timing["threads"] = cmp.threads
        for n in names:
            g = speeds[n]
            per[n]["tokens_per_s"] = g.tokens_per_s
            per[n]["generation"] = g.to_dict()
            reasons.setdefault("generation", []).extend(g.why)
        timing["generation"] = {"prompt_tokens": speeds[names[0]].prompt_tokens, "new_tokens": gen_tokens,
                                "greedy": True, "rounds": cmp.rounds}
        if pair:
            r = cmp.ratio(*pair)  # time ratio; speed ratio is its inverse
            ratios["generation"] = {"median": r.median, "iqr": r.iqr, "of": "/".join(pair)}
    timing["why"] = [f"{what}: {', '.join(_merged(why))}" for what, why in reasons.items() if why]
    timing["noisy"] = bool(timing["why"])
    return {"models": per, "ratios": ratios, "timing": timing}


def _number(text: str) -> float:
    import re

    found = re.findall(r"\d+(?:\.\d+)?", text)
    return float(found[0]) if found else 0.0


def _merged(reasons: list[str]) -> list[str]:
    """Several models' reasons for one figure as one: the widest spread and the smallest CPU share."""
    spreads = [w for w in reasons if w.startswith("±")]
    others = [w for w in reasons if not w.startswith("±")]
    return ([max(spreads, key=_number)] if spreads else []) + ([min(others, key=_number)] if others else [])


def measure_lm(model: nn.Module, tokenizer: Any, windows: Any, *, causal: bool = True, gen_tokens: int = 32,
               progress: bool = True, speed: bool = False) -> dict[str, Any]:
    """One model's figures (:func:`lm_figures`) and speed (:func:`lm_speed`, generation always for a
    causal LM; with ``speed`` also MACs and forward latency), in one flat dict."""
    out = lm_figures(model, windows, causal=causal, macs=speed, progress=progress)
    timed = lm_speed({"model": model}, tokenizer, causal=causal, forward=speed, gen_tokens=gen_tokens)
    out.update(timed["models"]["model"])
    out["timing"] = timed["timing"]
    return out
