"""Bipartite soft matching (ToMe, Bolya et al., ICLR 2023) as pure tensor functions.

Tokens are split alternately into two sets A (even positions) and B (odd positions); every A token
is scored against every B token by the cosine similarity of a *metric* (the attention keys, averaged
over heads), the ``r`` A tokens with the most similar B partner are merged into it, and the rest are
kept. Merging is a size-weighted average, and each token's *size* (how many input tokens it stands
for) is carried along so later layers can use proportional attention (``+ log size`` on the logits).

The first ``protected`` tokens (class, distillation, register tokens) are never merged and never
receive a merge; they stay in front, in their order. Tokens whose size is 0 (padding) are merged
first — they carry no weight, so merging them loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def max_merge(tokens: int, protected: int) -> int:
    """How many tokens one bipartite matching step can remove from ``tokens`` tokens (at most half
    of the unprotected ones, as in ToMe)."""
    return max(0, (tokens - protected) // 2)


def _flat(index: torch.Tensor, tokens: int) -> torch.Tensor:
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(-1) * tokens
    return (index + offsets).reshape(-1)


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i], :]`` for a (B, T, C) tensor and a (B, K) index, as one ``index_select``
    of whole rows (an order of magnitude faster on the CPU than ``gather`` with an expanded index)."""
    bsz, tokens, c = x.shape
    return x.reshape(bsz * tokens, c).index_select(0, _flat(index, tokens)).view(bsz, index.shape[1], c)


def add_rows_(x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Add ``rows[b, i]`` to ``x[b, index[b, i]]`` in place (repeated indices accumulate); ``x``
    must be contiguous (a fresh tensor)."""
    bsz, tokens, c = x.shape
    x.view(bsz * tokens, c).index_add_(0, _flat(index, tokens), rows.reshape(-1, c))
    return x


_take = take_rows


@dataclass
class Matching:
    """The result of one matching step: which A tokens stay (``unm``), which merge (``src``) and
    into which B token (``dst``). Indices count within the A and B sets."""

    unm: torch.Tensor  # (B, Ta - r) sorted
    src: torch.Tensor  # (B, r)
    dst: torch.Tensor  # (B, r)
    tokens: int
    protected: int

    @property
    def r(self) -> int:
        return self.src.shape[1]

    def merge(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """Reduce a (B, T, C) tensor to (B, T - r, C): protected tokens first, then the unmerged A
        tokens in their order, then the B tokens (with the merged A tokens reduced into them)."""
        p = self.protected
        pa, pb = (p + 1) // 2, p // 2
        a, b = x[:, ::2], x[:, 1::2]
        unm = _take(a, self.unm)
        src = _take(a, self.src)
        dst = b.scatter_reduce(1, self.dst.unsqueeze(-1).expand(-1, -1, x.shape[-1]), src, reduce=mode)
        return torch.cat([x[:, :p], unm[:, pa:], dst[:, pb:]], dim=1)

    def positions(self) -> torch.Tensor:
        """(B, T): the position each input token has after :meth:`merge` (merged tokens point to
        the token they were merged into)."""
        p = self.protected
        pa, pb = (p + 1) // 2, p // 2
        bsz = self.unm.shape[0]
        ta, tb = (self.tokens + 1) // 2, self.tokens // 2
        device = self.unm.device
        n_unm = self.unm.shape[1] - pa
        # A side: protected A tokens sit at their own index (2j); the other unmerged ones follow p.
        pos_a = torch.empty(bsz, ta, dtype=torch.long, device=device)
        rank = torch.arange(self.unm.shape[1], device=device)
        unm_pos = torch.where(rank < pa, 2 * rank, p + rank - pa).expand(bsz, -1)
        pos_a.scatter_(1, self.unm, unm_pos)
        j = torch.arange(tb, device=device)
        pos_b = torch.where(j < pb, 2 * j + 1, p + n_unm + j - pb).expand(bsz, -1)
        pos_a.scatter_(1, self.src, pos_b.gather(1, self.dst))
        pos = torch.empty(bsz, self.tokens, dtype=torch.long, device=device)
        pos[:, ::2] = pos_a
        pos[:, 1::2] = pos_b
        return pos


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 0,
                            size: torch.Tensor | None = None) -> Matching:
    """Match ``r`` tokens of ``metric`` (B, T, C) for merging (ToMe's balanced bipartite matching).

    ``protected`` leading tokens neither merge nor receive merges. ``size`` (B, T, 1), when given,
    marks padding (size 0): padded A tokens merge first, and no real token merges into padding.
    ``r`` must not exceed :func:`max_merge`.
    """
    bsz, tokens, _ = metric.shape
    limit = max_merge(tokens, protected)
    if not 0 <= r <= limit:
        raise ValueError(f"r={r} cannot be merged from {tokens} tokens with {protected} protected (at most {limit})")
    pa, pb = (protected + 1) // 2, protected // 2
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        if size is not None:
            pad = size[..., 0] <= 0
            scores = scores.masked_fill(pad[:, None, 1::2], -math.inf)     # never merge into padding
            scores = scores.masked_fill(pad[:, ::2, None], math.inf)       # padding merges first
        if pa:
            scores[:, :pa, :] = -math.inf
        if pb:
            scores[:, :, :pb] = -math.inf
        node_max = scores.amax(dim=-1)  # values only: an order of magnitude faster than max() on the CPU
        src = node_max.topk(r, dim=-1).indices
        # the A tokens that stay, in order: the complement of src (same count in every row)
        stays = torch.ones_like(node_max, dtype=torch.bool).scatter_(1, src, False)
        unm = stays.nonzero()[:, 1].view(bsz, -1)
        # the best partner is needed for the r merged tokens only
        dst = scores.gather(1, src.unsqueeze(-1).expand(-1, -1, scores.shape[-1])).argmax(dim=-1)
    return Matching(unm=unm, src=src, dst=dst, tokens=tokens, protected=protected)


def merge_wavg(matching: Matching, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` (B, T, C) by size-weighted averages; returns the merged tokens and their sizes
    (B, T - r, 1). ``size`` None means every token has size 1.

    One gather copies the tokens that stay; the ``r`` merged tokens are then folded into their
    destinations as weighted increments (x_dst += size_src · (x_src − x_dst) / size_total), so the
    work beyond the copy is O(r), not O(T)."""
    bsz, tokens, _ = x.shape
    p = matching.protected
    pa, pb = (p + 1) // 2, p // 2
    device = x.device
    tb = tokens // 2
    n_unm = matching.unm.shape[1] - pa
    keep = torch.cat([torch.arange(p, device=device).expand(bsz, -1), 2 * matching.unm[:, pa:],
                      (2 * torch.arange(pb, tb, device=device) + 1).expand(bsz, -1)], dim=1)
    src_tok = 2 * matching.src
    dst_pos = p + n_unm + (matching.dst - pb)
    out = _take(x, keep)
    if size is None:
        size = torch.ones(bsz, tokens, 1, dtype=x.dtype, device=device)
    new_size = _take(size, keep).detach()  # sizes are counts: no gradient (a mask without one keeps SDPA fused)
    src_size = _take(size, src_tok).detach()
    add_rows_(new_size, dst_pos, src_size)
    share = src_size / _take(new_size, dst_pos).clamp_min(torch.finfo(x.dtype).tiny)
    delta = share * (_take(x, src_tok) - _take(out, dst_pos))
    return add_rows_(out, dst_pos, delta), new_size
