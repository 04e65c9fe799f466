"""Checks of token-id inputs against the model that will read them: shape, type, vocabulary, context."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def vocab_size(model: nn.Module) -> int | None:
    """How many token ids the model's input embedding holds (None when it has none)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Embedding):
        return emb.num_embeddings
    n = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(n) if isinstance(n, int) else None


def context_length(model: nn.Module) -> int | None:
    """The longest input the model was built for (``max_position_embeddings`` / ``n_positions``), or None."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        n = getattr(config, key, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_token_ids(ids: Any, model: nn.Module, what: str = "token ids") -> None:
    """Raise a ValueError unless ``ids`` is a non-empty 2-D integer tensor (batch, seqlen) of ids the
    model's vocabulary holds, no longer than its context."""
    if not isinstance(ids, Tensor):
        raise ValueError(f"{what} must be a tensor of token ids (batch, seqlen); got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} must be integer token ids; got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{what} must be token ids of shape (batch, seqlen) with both at least 1; got shape "
                         f"{tuple(ids.shape)}")
    n = vocab_size(model)
    if n is not None and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{what} hold ids from {lo} to {hi}, outside the model's vocabulary of {n:,} (0 to "
                             f"{n - 1}): the tokenizer does not match the model")
    ctx = context_length(model)
    if ctx is not None and ids.shape[1] > ctx:
        raise ValueError(f"{what} have {ids.shape[1]:,} tokens per window, longer than the model's context of "
                         f"{ctx:,} (config.max_position_embeddings); use a seqlen of at most {ctx:,}")
