"""Perplexity of a causal language model over non-overlapping windows of token ids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 4, progress: bool = True) -> float:
    """exp(mean next-token negative log-likelihood) over every window of ``windows`` (n, seqlen).

    Each window is scored on its own (no context carried over), on its seqlen − 1 predicted tokens.
    """
    from tqdm.auto import tqdm

    from ..core.inputs import check_token_ids

    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        raise ValueError(f"windows must be token ids of shape (n, seqlen ≥ 2), got {shape}")
    check_token_ids(windows, model, "evaluation windows")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress, leave=False):
                batch = batch.to(device)
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
                total += float(nll)
                count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total / count)
