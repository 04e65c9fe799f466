import math

import pytest
import torch

from prunekit.tokens.importance import (attention_probs, causal_mean_importance, last_token_importance,
                                        mean_attention_importance, top_tokens, wpr_importance)
from prunekit.tokens.matching import bipartite_soft_matching, max_merge, merge_wavg


def reference_merge(x, metric, r, protected):
    """ToMe's matching written out with Python loops, one sequence at a time."""
    out = []
    for b in range(x.shape[0]):
        m = metric[b] / metric[b].norm(dim=-1, keepdim=True)
        a_idx = list(range(0, x.shape[1], 2))
        b_idx = list(range(1, x.shape[1], 2))
        best = []
        for ai in a_idx:
            if ai < protected:
                best.append((-math.inf, ai, None))
                continue
            cands = [(float(m[ai] @ m[bj]), bj) for bj in b_idx if bj >= protected]
            score, bj = max(cands)
            best.append((score, ai, bj))
        best.sort(key=lambda t: -t[0])
        merged = {ai: bj for _, ai, bj in best[:r]}
        groups = {bj: [bj] for bj in b_idx}
        for ai, bj in merged.items():
            groups[bj].append(ai)
        rows = [x[b, i] for i in range(protected)]
        rows += [x[b, ai] for ai in a_idx if ai >= protected and ai not in merged]
        rows += [x[b, groups[bj]].mean(0) for bj in b_idx if bj >= protected]
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("tokens,protected,r", [(17, 1, 5), (18, 2, 8), (16, 0, 8), (9, 3, 3)])
def test_matching_matches_a_loop_reference(tokens, protected, r):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(3, tokens, 6, generator=g, dtype=torch.float64)
    metric = torch.randn(3, tokens, 5, generator=g, dtype=torch.float64)
    matching = bipartite_soft_matching(metric, r, protected)
    merged, size = merge_wavg(matching, x, None)
    assert merged.shape == (3, tokens - r, 6)
    torch.testing.assert_close(merged, reference_merge(x, metric, r, protected))
    assert torch.equal(size.sum(dim=1).squeeze(-1), torch.full((3,), float(tokens), dtype=torch.float64))
    # protected tokens are untouched and in front
    torch.testing.assert_close(merged[:, :protected], x[:, :protected])


def test_positions_point_every_token_to_its_merged_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 21, 4, generator=g, dtype=torch.float64)
    metric = torch.randn(2, 21, 3, generator=g, dtype=torch.float64)
    matching = bipartite_soft_matching(metric, 7, 1)
    merged, size = merge_wavg(matching, x, None)
    pos = matching.positions()
    assert pos.min() >= 0 and pos.max() == merged.shape[1] - 1
    for b in range(2):
        for j in range(merged.shape[1]):
            members = (pos[b] == j).nonzero().flatten()
            assert len(members) == int(size[b, j, 0])
            torch.testing.assert_close(merged[b, j], x[b, members].mean(0))


def test_padding_merges_first_and_never_receives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 4, generator=g)
    metric = torch.randn(1, 12, 3, generator=g)
    size = torch.ones(1, 12, 1)
    size[0, 6:] = 0  # 6 padding tokens, 3 of them in the A set (6, 8, 10)
    matching = bipartite_soft_matching(metric, 3, 1, size=size)
    assert sorted((2 * matching.src[0]).tolist()) == [6, 8, 10]
    merged, new_size = merge_wavg(matching, x, size)
    # the real tokens are all still there, unchanged
    assert new_size.sum() == 6
    real = merged[0][new_size[0, :, 0] > 0]
    assert torch.allclose(torch.sort(real.sum(-1)).values, torch.sort(x[0, :6].sum(-1)).values)


def test_r_bound_is_enforced():
    assert max_merge(197, 1) == 98
    with pytest.raises(ValueError, match="at most 4"):
        bipartite_soft_matching(torch.randn(1, 10, 3), 5, 1)


def test_wpr_finds_the_hub_of_an_attention_graph():
    # every token attends mostly to token 3; token 3 attends to token 5; WPR ranks 3 first, then 5
    n = 8
    probs = torch.full((1, 2, n, n), 0.02)
    probs[..., :, 3] = 0.8
    probs[..., 3, :] = 0.02
    probs[..., 3, 5] = 0.86
    probs = probs / probs.sum(-1, keepdim=True)
    imp = wpr_importance(probs, iterations=20, tol=0.0)
    order = imp[0].argsort(descending=True).tolist()
    assert order[:2] == [3, 5]
    # the stationary vector of each head sums to one; the aggregate is sqrt(sum over heads of s^2)
    s = torch.full((n, 1), 1.0 / n)
    for _ in range(20):
        s = probs[0, 0].T @ s
    torch.testing.assert_close(imp[0], (2 * s.squeeze(-1) ** 2).sqrt())


def test_mean_attention_and_validity():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    torch.testing.assert_close(mean_attention_importance(probs), probs.mean(dim=(1, 2)))
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = mean_attention_importance(probs, valid)
    torch.testing.assert_close(got[1], probs[1].mean(0)[:3].mean(0))


def test_attention_probs_matches_softmax():
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    bias = torch.zeros(2, 1, 1, 6)
    bias[1, ..., 4:] = -math.inf
    p = attention_probs(q, k, 0.5, bias)
    torch.testing.assert_close(p[0], torch.softmax(q[0] @ k[0].transpose(-1, -2) * 0.5, -1))
    assert torch.all(p[1, ..., 4:] == 0)


def test_last_token_importance_with_gqa_and_mask():
    q, k = torch.randn(1, 4, 7, 8), torch.randn(1, 2, 7, 8)
    kk = k.repeat_interleave(2, dim=1)
    expected = torch.softmax(q[:, :, -1:] @ kk.transpose(-1, -2) * 0.3, -1).mean(1)[:, 0]
    torch.testing.assert_close(last_token_importance(q, k, 0.3), expected)
    mask = torch.ones(1, 1, 7, 7, dtype=torch.bool)
    mask[..., 2] = False
    assert last_token_importance(q, k, 0.3, mask)[0, 2] == 0


def test_causal_mean_counts_only_the_queries_that_see_a_key():
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    imp = causal_mean_importance(q, k, 1.0)
    logits = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf)
    p = torch.softmax(logits, -1).mean(1)[0]
    torch.testing.assert_close(imp[0], p.sum(0) / torch.arange(5, 0, -1).float())
    assert imp[0, 0] < 1 and imp[0, -1] > 0


def test_top_tokens_keeps_protected_and_order():
    imp = torch.tensor([[0.0, 5.0, 1.0, 9.0, 2.0, 9.0]])
    assert top_tokens(imp, 2, protected=1).tolist() == [[0, 3, 5]]
    assert top_tokens(imp, 3, protected=0).tolist() == [[1, 3, 5]]
