"""Scoring the experts of one MoE layer on its calibration tokens, and choosing which to keep.

- ``frequency``: how often the router picks the expert (its share of the tokens' top-k slots);
- ``reap`` (Lasby et al., 2025, "REAP the Experts"): the mean, over the tokens routed to the expert, of
  its router weight times the norm of its output, ``mean_{x ∈ X_e} g_e(x) · ‖f_e(x)‖`` — with the
  router weights the model applies (renormalised over the top-k where the model renormalises, as REAP's
  code now does);
- ``reconstruction`` (in the spirit of "Not All Experts are Equal", Lu et al., 2024, which searches the
  expert subsets that best reconstruct the layer's output): experts are removed greedily, each time the
  one whose removal changes the layer's routed output least, with tokens re-routed exactly as the pruned
  model would route them; the score is the rank of removal (removed first = least important).

Every score is "higher = keep"; :func:`choose_keep` keeps the top ones (per routing group where the
router is group-limited, so each group keeps the same number and the groups stay contiguous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.fraction import keep_count as keep_count_of
from .layout import MoeLayer

TOKEN_CHUNK = 4096


@dataclass
class LayerStats:
    """What one pass of a layer's calibration tokens tells about its experts."""

    tokens: int
    frequency: Tensor  # (E,) share of top-k slots
    reap: Tensor  # (E,)
    logit_gram: Tensor  # (E, E) Σ_t l_t l_tᵀ over the router logits, for router-logit similarity


@torch.no_grad()
def layer_stats(layer: MoeLayer, x: Tensor, reap: bool = True) -> LayerStats:
    """Router frequency, REAP saliency and the router-logit Gram matrix over tokens ``x`` ``(T, H)``."""
    E = layer.num_experts
    count = torch.zeros(E, dtype=torch.float64)
    reap_sum = torch.zeros(E, dtype=torch.float64)
    gram = torch.zeros(E, E, dtype=torch.float64)
    T = x.shape[0]
    for s in range(0, T, TOKEN_CHUNK):
        xs = x[s:s + TOKEN_CHUNK]
        lg = layer.logits(xs)
        gram += (lg.T.double() @ lg.double()).cpu()
        w, idx = layer.route(xs, logits=lg)
        count += torch.bincount(idx.reshape(-1), minlength=E).double().cpu()
        if reap:
            for e in torch.unique(idx).tolist():
                tok, slot = torch.where(idx == e)
                norms = torch.linalg.vector_norm(layer.expert_forward(e, xs[tok]).float(), dim=-1)
                reap_sum[e] += float((w[tok, slot].float() * norms).sum())
    k = layer.routing.top_k
    freq = count / max(T * k, 1)
    reap_mean = torch.where(count > 0, reap_sum / count.clamp_min(1), torch.zeros_like(reap_sum))
    return LayerStats(T, freq.float(), reap_mean.float(), gram)


def groups_of(layer: MoeLayer) -> list[list[int]]:
    """The expert groups the router chooses within (one group for routers that are not group-limited)."""
    E = layer.num_experts
    G = layer.routing.n_group if layer.routing.rule == "sigmoid_group" else 1
    size = E // G
    return [list(range(g * size, (g + 1) * size)) for g in range(G)]


def keep_count(layer: MoeLayer, sparsity: float) -> int:
    """How many experts per routing group stay at ``sparsity`` (fraction removed, rounded down per group)."""
    groups = groups_of(layer)
    size = len(groups[0])
    return keep_count_of(size, sparsity, minimum=0)


def check_keep(layer: MoeLayer, sparsity: float) -> tuple[int, int]:
    """``(kept per group, kept in all)``; a ValueError when the result could not route: fewer experts than
    top-k, or (grouped routers) groups too small for the router's rule."""
    groups = groups_of(layer)
    per = keep_count(layer, sparsity)
    total = per * len(groups)
    k = layer.routing.top_k
    E = layer.num_experts
    if layer.routing.rule == "sigmoid_group":
        G, tg = len(groups), layer.routing.topk_group
        if per < 2:
            raise ValueError(
                f"sparsity={sparsity} would leave {per} expert(s) in each of the {G} routing groups of {layer.name} "
                f"(n_group={G}); DeepSeek-V3's router scores a group by its two best experts, so every group needs ≥ 2. "
                f"Use sparsity ≤ {(len(groups[0]) - 2) / len(groups[0]):.3g}")
        if per * tg < k:
            raise ValueError(
                f"sparsity={sparsity} would leave {per} experts per group in {layer.name}; with topk_group={tg} the "
                f"router could reach only {per * tg} experts, fewer than top_k={k} (num_experts_per_tok). "
                f"Use sparsity ≤ {(len(groups[0]) - -(-k // tg)) / len(groups[0]):.3g}")
    elif total < k:
        most = (E - k) / E
        raise ValueError(
            f"sparsity={sparsity} would leave {total} of {E} experts in {layer.name}, fewer than top_k={k} "
            f"(num_experts_per_tok): every token needs {k} experts. The most you can remove is {most:.3g} "
            f"({E - k} experts)")
    return per, total


def choose_keep(layer: MoeLayer, scores: Tensor, per_group: int) -> list[int]:
    """The experts kept: the ``per_group`` highest scores of each routing group (ties: lower index), sorted."""
    keep: list[int] = []
    for group in groups_of(layer):
        g = torch.tensor(group)
        s = scores[g].double()
        order = sorted(range(len(group)), key=lambda i: (-float(s[i]), i))
        keep += [group[i] for i in order[:per_group]]
    return sorted(keep)


def _slot_outputs(layer: MoeLayer, x: Tensor, idx: Tensor, need: Tensor, out: Tensor) -> None:
    """Fill ``out[t, j]`` with expert ``idx[t, j]``'s output on token ``t`` wherever ``need[t, j]``."""
    for e in torch.unique(idx[need]).tolist():
        tok, slot = torch.where(need & (idx == e))
        out[tok, slot] = layer.expert_forward(e, x[tok]).float()


@torch.no_grad()
def reconstruction_scores(layer: MoeLayer, x: Tensor, per_group: int) -> tuple[Tensor, list[float]]:
    """Greedy removal by reconstruction error of the layer's routed output: each step removes the expert whose
    removal (tokens re-routed over the experts left, exactly as the pruned router routes them) moves the
    output least from the full layer's. Returns per-expert scores (the step an expert goes; kept experts score
    highest) and the squared error relative to ‖y‖² after each step."""
    E = layer.num_experts
    groups = groups_of(layer)
    logits = layer.logits(x)
    w_cur, idx_cur = layer.route(x, logits=logits)
    f_cur = torch.zeros(*idx_cur.shape, x.shape[1], dtype=torch.float32, device=x.device)
    _slot_outputs(layer, x, idx_cur, torch.ones_like(idx_cur, dtype=torch.bool), f_cur)
    ref = (w_cur.float().unsqueeze(-1) * f_cur).sum(1)
    ref_sq = float(ref.pow(2).sum()) or 1.0
    removed = torch.zeros(E, dtype=torch.bool, device=x.device)
    order: list[int] = []
    errors: list[float] = []
    n_remove = sum(len(g) - per_group for g in groups)
    for _ in range(n_remove):
        best = None
        for c in range(E):
            group = next(g for g in groups if c in g)
            if removed[c] or sum(1 for e in group if not removed[e]) <= per_group:
                continue
            trial = removed.clone()
            trial[c] = True
            w_n, idx_n = layer.route(x, trial, logits=logits)
            match = idx_n.unsqueeze(-1) == idx_cur.unsqueeze(-2)  # (T, k, k)
            has = match.any(-1)
            src = match.float().argmax(-1)
            f_n = torch.gather(f_cur, 1, src.unsqueeze(-1).expand(-1, -1, f_cur.shape[-1])).clone()
            _slot_outputs(layer, x, idx_n, ~has, f_n)
            out = (w_n.float().unsqueeze(-1) * f_n).sum(1)
            err = float((ref - out).pow(2).sum())
            if best is None or err < best[0] - 1e-12 * ref_sq:
                best = (err, c, w_n, idx_n, f_n)
        assert best is not None, "no expert left to remove"
        err, c, w_cur, idx_cur, f_cur = best
        removed[c] = True
        order.append(c)
        errors.append(err / ref_sq)
    scores = torch.full((E,), float(E), dtype=torch.float32)
    for rank, c in enumerate(order):
        scores[c] = float(rank)
    return scores, errors
