"""Token importance from one layer's attention, and the top-k choice of tokens to keep.

- :func:`attention_probs`: the attention probabilities of one layer, softmax(q·kᵀ·scale + bias),
  computed beside the fused kernel at the layers that prune only.
- :func:`wpr_importance`: Zero-TPrune's I-stage (Wang et al., CVPR 2024): the Weighted PageRank of
  every head's attention graph (s ← Aᵀ s from a uniform start), aggregated over heads by the root
  of the sum of squares (their "emphasizing informative region").
- :func:`mean_attention_importance`: the attention a token receives, averaged over heads and
  queries (the baseline most token-pruning papers compare with).
- :func:`cls_attention_importance`: EViT's ranking, the class token's attention row.
- :func:`random_importance`: a seeded random ranking (the floor any ranking must beat).
- :func:`last_token_importance`: FastV's ranking for decoders (Chen et al., ECCV 2024): the
  attention the last prompt token pays to each earlier one, averaged over heads.
"""

from __future__ import annotations

import math

import torch


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, N, N) attention probabilities from queries and keys (B, H, N, D), float32."""
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(dim=-1)


def wpr_importance(probs: torch.Tensor, iterations: int = 10, valid: torch.Tensor | None = None,
                   tol: float = 1e-4) -> torch.Tensor:
    """Zero-TPrune's Weighted PageRank importance (B, N) of each token from (B, H, N, N)
    probabilities: per head s ← Aᵀ s from s = 1/N (over ``valid`` tokens, a (B, N) bool, when
    given) for at most ``iterations`` steps — fewer once no head's distribution moves by more than
    ``tol`` (L1) in a step — then sqrt(Σ_heads s²)."""
    bsz, heads, n, _ = probs.shape
    if valid is None:
        s = probs.new_full((bsz, heads, 1, n), 1.0 / n)
    else:
        w = valid.to(probs.dtype)
        s = (w / w.sum(-1, keepdim=True)).view(bsz, 1, 1, n).expand(bsz, heads, 1, n)
    for _ in range(max(1, iterations)):
        nxt = s @ probs  # the row-vector form of Aᵀ s: no transposed copy of the map
        moved = (nxt - s).abs().sum(-1).max()
        s = nxt
        if moved <= tol:
            break
    return s.squeeze(-2).pow(2).sum(dim=1).sqrt()


def cls_attention_importance(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """EViT's ranking (Liang et al., ICLR 2022): the attention the class token (query 0) pays to
    each token (B, N), averaged over heads — one row of the map, so O(N) instead of O(N²)."""
    logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def mean_attention_importance(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The mean attention (B, N) each token receives, over heads and over the (valid) queries."""
    per_query = probs.mean(dim=1)  # (B, N_q, N_k)
    if valid is None:
        return per_query.mean(dim=1)
    w = valid.to(per_query.dtype).unsqueeze(-1)
    return (per_query * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def random_importance(batch: int, tokens: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A reproducible random importance (B, N) from ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(batch, tokens, generator=gen).to(device)


def last_token_importance(query: torch.Tensor, key: torch.Tensor, scale: float,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """FastV's ranking: the attention of the last query token to every key (B, N_k), averaged over
    heads. ``key`` may have fewer heads than ``query`` (grouped-query attention); ``mask`` is the
    layer's attention mask (bool, or additive float) or None."""
    q = query[:, :, -1:, :].float()
    groups = q.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    logits = (q @ k.transpose(-1, -2)) * scale  # (B, H, 1, N)
    if mask is not None:
        m = mask[..., -1:, :]
        logits = logits.masked_fill(~m, -math.inf) if m.dtype == torch.bool else logits + m.float()
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def causal_mean_importance(query: torch.Tensor, key: torch.Tensor, scale: float,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean attention (B, N) each key receives from the queries that can see it, in a causal
    layer (FastV's text: "the average attention a token receives"); builds the full (N × N) map of
    this one layer."""
    groups = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    logits = (query.float() @ k.transpose(-1, -2)) * scale
    nq, nk = logits.shape[-2:]
    if mask is None:
        causal = torch.ones(nq, nk, dtype=torch.bool, device=logits.device).tril(nk - nq)
        logits = logits.masked_fill(~causal, -math.inf)
        seen = causal
    elif mask.dtype == torch.bool:
        logits = logits.masked_fill(~mask, -math.inf)
        seen = mask
    else:
        logits = logits + mask.float()
        seen = mask > torch.finfo(mask.dtype).min / 2
    probs = logits.softmax(dim=-1).nan_to_num(0.0).mean(dim=1)  # (B, Nq, Nk)
    counts = seen.reshape(-1, nq, nk).to(probs.dtype).sum(dim=-2).clamp_min(1.0)
    return probs.sum(dim=-2) / counts


def top_tokens(importance: torch.Tensor, keep: int, protected: int = 0) -> torch.Tensor:
    """(B, protected + keep) indices to keep: the protected leading tokens, then the ``keep`` most
    important of the others, in their original order (ties broken by position)."""
    bsz, n = importance.shape
    rest = importance[:, protected:]
    # a stable descending sort so that equal scores keep the earlier token
    order = torch.sort(rest, dim=-1, descending=True, stable=True).indices[:, :keep]
    chosen = order.sort(dim=-1).values + protected
    lead = torch.arange(protected, device=importance.device).expand(bsz, -1)
    return torch.cat([lead, chosen], dim=1)
