"""The run-time side of token merging and attention pruning in encoders: the wrapped layer forward,
the per-forward token bookkeeping (sizes, where every input token went), and the reductions.

Every layer of the encoder is wrapped (a layer after a reduction needs the proportional-attention
bias even when it reduces nothing itself). Layer 0 starts the bookkeeping of a forward; the last
layer finishes it (and, when asked, brings the output back to the input's length).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .encoders import EncoderSite
from .importance import (attention_probs, cls_attention_importance, mean_attention_importance, random_importance,
                         top_tokens, wpr_importance)
from .matching import bipartite_soft_matching, max_merge, merge_wavg, take_rows


@dataclass
class LayerPlan:
    """What one layer does to the tokens after its attention."""

    action: str | None = None   # "merge", "prune" or None
    r: int = 0                  # merge: tokens to merge away
    keep: float = 1.0           # prune: fraction of the unprotected tokens kept
    iterations: int = 1         # prune with Weighted PageRank: at most this many steps
    tol: float = 0.0            # … stopping once a step moves no head by more than this (L1)


def kept_count(tokens: int, protected: int, keep: float) -> int:
    """Unprotected tokens kept out of ``tokens`` at fraction ``keep`` (at least one)."""
    free = tokens - protected
    return min(free, max(1, int(math.floor(keep * free + 0.5))))


def planned_tokens(plan: list[LayerPlan], tokens: int, protected: int) -> list[int]:
    """Tokens entering each layer, and leaving the last one, for an input of ``tokens`` tokens
    (merges clamped to what a layer can lose)."""
    out = [tokens]
    t = tokens
    for step in plan:
        if step.action == "merge":
            t -= min(step.r, max_merge(t, protected))
        elif step.action == "prune":
            t = protected + kept_count(t, protected, step.keep)
        out.append(t)
    return out


def key_validity(mask: Any, batch: int, tokens: int) -> torch.Tensor | None:
    """(B, N) bool: which keys the encoder's own attention mask lets any query see; None when every
    key is visible (or there is no mask)."""
    if not isinstance(mask, torch.Tensor):
        return None
    if mask.dtype == torch.bool:
        seen = mask
    else:
        seen = mask > torch.finfo(mask.dtype).min / 2 if mask.is_floating_point() else mask != 0
    if seen.shape[-1] != tokens:
        return None
    seen = seen.reshape(seen.shape[0], -1, tokens).any(dim=1).expand(batch, tokens)
    return None if bool(seen.all()) else seen


_take = take_rows


@dataclass
class EncoderRuntime:
    """State shared by the wrapped layers of one patched encoder."""

    site: EncoderSite
    plan: list[LayerPlan]
    method: str
    prop_attn: bool = True
    restore_output: bool = False
    seed: int = 0
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    capture_for: int | None = None
    last: dict[str, Any] | None = None
    warned: bool = False
    # per forward
    size: torch.Tensor | None = None
    index: torch.Tensor | None = None
    frozen: torch.Tensor | None = None
    tokens: list[int] = field(default_factory=list)
    clamped: list[tuple[int, int, int]] = field(default_factory=list)

    # -- bookkeeping ---------------------------------------------------------------------------
    def begin(self, h: torch.Tensor, mask: Any) -> None:
        bsz, n, _ = h.shape
        valid = key_validity(mask, bsz, n)
        self.size = None if valid is None else valid.to(h.dtype).unsqueeze(-1)
        self.index = None
        self.frozen = None
        self.tokens = [n]
        self.clamped = []
        self.captured.clear()

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive attention bias: log(size) (proportional attention; -inf on padding), or
        only the padding mask when proportional attention is off."""
        if self.size is None:
            return None
        size = self.size[..., 0]
        if self.prop_attn:
            b = size.log()
        else:
            b = torch.zeros_like(size).masked_fill(size <= 0, -math.inf)
        return b.to(dtype)[:, None, None, :]

    def _compose(self, pos: torch.Tensor) -> None:
        """Follow one reduction: ``pos`` (B, N) is each current token's new position (-1: dropped)."""
        if self.index is None:
            self.index = pos
        else:
            moved = pos.gather(1, self.index.clamp_min(0))
            self.index = torch.where(self.index >= 0, moved, self.index)

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        out = h
        if self.restore_output and self.index is not None:
            gathered = _take(h, self.index.clamp_min(0))
            if self.frozen is not None:
                out = torch.where((self.index >= 0).unsqueeze(-1), gathered, self.frozen)
            else:
                out = gathered
        self.last = {"tokens": list(self.tokens), "output_tokens": out.shape[1], "clamped": list(self.clamped)}
        if self.clamped and not self.warned:
            self.warned = True
            where = ", ".join(f"layer {i}: {done} of {asked}" for i, asked, done in self.clamped[:4])
            warnings.warn(f"token merging: the input ({self.tokens[0]} tokens) was too short for the r asked; merged "
                          f"fewer tokens ({where}{', …' if len(self.clamped) > 4 else ''}). "
                          "pt.last_forward(model) shows the tokens per layer.", stacklevel=3)
        self.size = self.index = self.frozen = None
        self.captured.clear()
        return out

    # -- reductions ----------------------------------------------------------------------------
    def merge(self, i: int, layer: nn.Module, h: torch.Tensor, r: int) -> torch.Tensor:
        n = h.shape[1]
        p = self.site.protected
        limit = max_merge(n, p)
        if r > limit:
            self.clamped.append((i, r, limit))
            r = limit
        if r <= 0:
            return h
        metric = self.site.adapter.heads(layer, self.captured["k"]).mean(dim=1)
        matching = bipartite_soft_matching(metric, r, p, size=self.size)
        h, self.size = merge_wavg(matching, h, self.size)
        if self.restore_output:
            self._compose(matching.positions())
        return h

    def prune(self, i: int, layer: nn.Module, h: torch.Tensor, step: LayerPlan, bias: torch.Tensor | None) -> torch.Tensor:
        bsz, n, _ = h.shape
        p = self.site.protected
        keep = kept_count(n, p, step.keep)
        if keep >= n - p:
            return h
        valid = None if self.size is None else self.size[..., 0] > 0
        with torch.no_grad():
            if self.method == "random":
                importance = random_importance(bsz, n, self.seed + i, h.device)
            else:
                ad = self.site.adapter
                q, k = ad.heads(layer, self.captured["q"]), ad.heads(layer, self.captured["k"])
                if self.method == "cls-attention":
                    importance = cls_attention_importance(q, k, ad.scale(layer), bias)
                else:
                    probs = attention_probs(q, k, ad.scale(layer), bias)
                    if self.method == "attention":
                        importance = wpr_importance(probs, step.iterations, valid, step.tol)
                    else:
                        importance = mean_attention_importance(probs, valid)
            if valid is not None:
                importance = importance.masked_fill(~valid, -math.inf)
            kept = top_tokens(importance, keep, p)
        if self.restore_output:
            dropped = torch.ones(bsz, n, dtype=torch.bool, device=h.device).scatter_(1, kept, False)
            index = self.index if self.index is not None else torch.arange(n, device=h.device).expand(bsz, -1)
            safe = index.clamp_min(0)
            now = (index >= 0) & dropped.gather(1, safe)
            state = _take(h, safe)
            base = self.frozen if self.frozen is not None else torch.zeros_like(state)
            self.frozen = torch.where(now.unsqueeze(-1), state, base)
        if self.restore_output:
            pos = torch.full((bsz, n), -1, dtype=torch.long, device=h.device)
            pos.scatter_(1, kept, torch.arange(kept.shape[1], device=h.device).expand(bsz, -1))
            self._compose(pos)
        if self.size is not None:
            self.size = _take(self.size, kept)
        return _take(h, kept)


class EncoderLayerForward:
    """The forward that replaces an encoder layer's: attention half, token reduction, MLP half."""

    def __init__(self, runtime: EncoderRuntime, index: int, layer: nn.Module) -> None:
        self.runtime = runtime
        self.index = index
        self.layer = layer

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        rt, layer = self.runtime, self.layer
        adapter = rt.site.adapter
        h, mask = adapter.split_args(args, kwargs)
        if self.index == 0:
            rt.begin(h, mask)
        step = rt.plan[self.index]
        bias = rt.bias(h.dtype)
        rt.capture_for = self.index if step.action else None
        h = adapter.attention_half(layer, h, bias)
        rt.capture_for = None
        if step.action == "merge":
            h = rt.merge(self.index, layer, h, step.r)
        elif step.action == "prune":
            h = rt.prune(self.index, layer, h, step, bias)
        rt.captured.clear()
        h = adapter.mlp_half(layer, h)
        rt.tokens.append(h.shape[1])
        if self.index == len(rt.plan) - 1:
            h = rt.finish(h)
        return h


class Capture:
    """Wraps a query/key module's forward so the layer being reduced can read its output."""

    def __init__(self, runtime: EncoderRuntime, index: int, slot: str, original: Any) -> None:
        self.runtime = runtime
        self.index = index
        self.slot = slot
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.original(*args, **kwargs)
        if self.runtime.capture_for == self.index:
            self.runtime.captured[self.slot] = out.detach()
        return out
