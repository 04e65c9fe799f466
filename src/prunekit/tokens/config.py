"""Typed configs of the token methods (one per registered name in :data:`prunekit.tokens.TOKEN_METHODS`).

``keep`` is the fraction of tokens kept (``(0, 1]``), as everywhere in prunekit; the functions also
take ``sparsity = 1 - keep`` (never both). ``r`` is ToMe's number of tokens merged away per layer.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator

from ..core.config import Config
from ..core.fraction import check_fraction

def _no_bool(value):
    if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
        raise ValueError(f"a whole number (or a list of them) was expected, got {value!r}")
    return value


def _keep_values(value):
    """``keep`` as a fraction in (0, 1] or a non-empty list of them (errors as ValueError, so that
    pydantic reports them on the field)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError("keep must be a number in (0, 1] or a non-empty list of them, got []")
    try:
        checked = [check_fraction(v, "keep", "(0, 1]") for v in values]
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return checked if isinstance(value, (list, tuple)) else checked[0]


class ToMeConfig(Config):
    """Token Merging (Bolya et al., ICLR 2023): merge ``r`` tokens away in every layer (or ``r[i]``
    in layer i) by bipartite soft matching on the attention keys, with size-weighted averages and
    proportional attention (``prop_attn``: ``+ log size`` on the logits, passed to the fused kernel
    as an additive mask). ``unmerge`` copies each merged token back to every position it stands for
    at the output, so the output keeps its length (None: on for text encoders and average-pooled
    ViTs, off for class-token models)."""

    method: Literal["tome"] = "tome"
    r: Union[int, list[int]] = 8
    prop_attn: bool = True
    unmerge: bool | None = None

    _check_r = field_validator("r", mode="before")(classmethod(lambda cls, v: _no_bool(v)))

    @field_validator("r")
    @classmethod
    def _r_non_negative(cls, v):
        values = v if isinstance(v, list) else [v]
        if any(x < 0 for x in values):
            raise ValueError(f"r must be a whole number >= 0 (or a list of them, one per layer), got {v!r}")
        return v


class _EncoderPruneConfig(Config):
    """Shared settings of the attention-ranked pruning methods for encoders: at each layer in
    ``layers`` (0-based; None: at 1/4, 1/2 and 3/4 of the depth) keep the fraction ``keep`` of the
    unprotected tokens that reach it (a number, or one per layer), ranked by that layer's attention;
    the others are dropped before the layer's MLP. ``restore`` returns every dropped token at the
    output with the hidden state it had when dropped, so the output keeps its length (None: on for
    text encoders, off for vision models)."""

    keep: Union[float, list[float]] = 0.5
    layers: list[int] | None = None
    restore: bool | None = None

    _check_keep = field_validator("keep", mode="before")(classmethod(lambda cls, v: _keep_values(v)))

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_ok(cls, v):
        if v is None:
            return v
        if isinstance(v, tuple):
            v = list(v)
        v = _no_bool(v)
        if not isinstance(v, list) or not all(isinstance(i, int) for i in v):
            raise ValueError(f"layers must be a list of layer indices, got {v!r}")
        if any(i < 0 for i in v):
            raise ValueError(f"layers must be layer indices >= 0, got {v!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"layers must not repeat a layer, got {v!r}")
        if v != sorted(v):
            raise ValueError(f"layers must be in increasing order, got {v!r}")
        return v


class ZeroTPruneConfig(_EncoderPruneConfig):
    """Zero-TPrune's I-stage (Wang et al., CVPR 2024): rank tokens by the Weighted PageRank of the
    attention graph, per head, aggregated over heads (root of the sum of squares). At most
    ``iterations`` steps of the power iteration (None: the paper's rule — 30 in the first three
    layers, 10 in the middle, 1 in the last three), fewer once no head moves by more than ``tol``
    (L1) in a step. The paper's S-stage (similarity-based pruning within importance groups) and its
    variance-based head filter are not implemented."""

    method: Literal["attention"] = "attention"
    iterations: int | None = Field(default=None, ge=1)
    tol: float = Field(default=1e-4, ge=0)


class MeanAttentionConfig(_EncoderPruneConfig):
    """Baseline: rank tokens by the mean attention they receive (over heads and queries)."""

    method: Literal["mean-attention"] = "mean-attention"


class ClsAttentionConfig(_EncoderPruneConfig):
    """EViT's ranking (Liang et al., ICLR 2022): keep the tokens the class token attends to most —
    one row of the attention map, so it costs O(N) where the two above build the N × N map."""

    method: Literal["cls-attention"] = "cls-attention"


class RandomPruneConfig(_EncoderPruneConfig):
    """Floor: keep a random subset of tokens (seeded, the same for every forward)."""

    method: Literal["random"] = "random"
    seed: int = 0


class FastVConfig(Config):
    """FastV-style decoder pruning (Chen et al., ECCV 2024): layers ``0 … layer-1`` see the whole
    prompt; the attention of layer ``layer-1`` ranks the prompt tokens (``score="last"``: what the
    last prompt token attends to, FastV's code; ``"mean"``: the mean attention each token receives,
    which builds that one layer's full map; baselines: ``"recent"`` keeps the latest tokens, a
    sliding window, and ``"random"`` a seeded random subset), and layers ``layer …`` see — and
    cache — only the fraction ``keep`` of the prompt tokens, always including the last ``recent``
    ones. Pruning happens once, at prefill; the tokens generated after it are never pruned."""

    method: Literal["fastv"] = "fastv"
    keep: float = 0.5
    layer: int = Field(default=2, ge=1)
    score: Literal["last", "mean", "recent", "random"] = "last"
    seed: int = 0
    recent: int = Field(default=1, ge=1)

    @field_validator("keep", mode="before")
    @classmethod
    def _keep_ok(cls, v):
        if isinstance(v, (list, tuple)):
            raise ValueError(f"keep must be one number in (0, 1] (the prompt is pruned once), got {v!r}")
        return _keep_values(v)


ENCODER_PRUNE_CONFIGS = (ZeroTPruneConfig, MeanAttentionConfig, ClsAttentionConfig, RandomPruneConfig)
