"""PQ Index / SAP and the rate-distortion dynamic programme, against hand computations."""

import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.allocate import allocate, pq_index, rd_solve, sap_counts
from prunekit.core.mask import get_mask


def test_pq_index_by_hand():
    # flat: ‖w‖_p / ‖w‖_q = d^(1/p − 1/q), so I = 0; one non-zero of d = 4 (p = 1/2, q = 1): I = 1 − 4^(−1)
    assert pq_index(torch.ones(4)) == pytest.approx(0.0, abs=1e-12)
    assert pq_index(torch.tensor([0.0, 3.0, 0.0, 0.0])) == pytest.approx(0.75)
    w = torch.tensor([1.0, 4.0])  # ‖w‖_½ = (1 + 2)² = 9, ‖w‖₁ = 5, d^(1 − 2) = 1/2
    assert pq_index(w) == pytest.approx(1 - 0.5 * 9 / 5)
    assert pq_index(w * 1000) == pytest.approx(pq_index(w))  # scale-free
    with pytest.raises(ValueError, match="0 < p < q"):
        pq_index(w, p=1.0, q=0.5)


def test_sap_counts_by_hand():
    # flat layer: r = d, nothing to prune; one-hot layer of 4: r = 4 · (1 − 0.75)^1 = 1, prune ⌊4 · min(0.75, 0.9)⌋ = 3
    counts = sap_counts({"flat": torch.ones(4), "sparse": torch.tensor([0.0, 3.0, 0.0, 0.0])})
    assert counts == {"flat": 0, "sparse": 3}
    # β caps a round: min(γ(1 − r/d), β) with β = 0.5 -> ⌊4 · 0.5⌋
    assert sap_counts({"sparse": torch.tensor([0.0, 3.0, 0.0, 0.0])}, beta=0.5) == {"sparse": 2}


def test_pq_allocation_hits_the_target_and_favours_the_compressible_layer():
    gen = torch.Generator().manual_seed(0)
    flat = torch.rand(100, generator=gen) * 0.1 + 1.0           # near-uniform magnitudes
    peaked = torch.randn(100, generator=gen).abs() ** 4          # heavy-tailed: compressible
    counts = allocate({"flat": flat, "peaked": peaked}, 0.5, "pq")
    assert sum(counts.values()) == 100
    assert counts["peaked"] > counts["flat"]


def test_rd_solve_picks_the_least_total_distortion_by_hand():
    curves = {"a": [(0, 0.0), (2, 1.0), (4, 10.0)], "b": [(0, 0.0), (2, 3.0), (4, 4.0)]}
    # reach 4: (a4,b0)=10, (a2,b2)=4, (a0,b4)=4 -> a tie at 4; reach 6: (a2,b4)=5 beats (a4,b2)=13
    assert rd_solve(curves, 6) == {"a": 2, "b": 4}
    got = rd_solve(curves, 4)
    assert sum(got.values()) == 4 and (got in ({"a": 2, "b": 2}, {"a": 0, "b": 4}))
    # reaching 3 chooses 4 (a2 + b2 costs 4, a4 costs 10... a0+b4 = 4) and hands one back
    assert sum(rd_solve(curves, 3).values()) == 3
    with pytest.raises(ValueError, match="at most 8"):
        rd_solve(curves, 9)
    with pytest.raises(ValueError, match="count 0"):
        rd_solve({"a": [(2, 1.0)]}, 1)


def test_rd_method_prunes_the_layer_whose_output_matters_less():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(10)  # the head's weights dominate the output: pruning it costs more
        model[0].weight.copy_(torch.eye(8))
    x = torch.randn(16, 8)
    report = pk.prune_(model, "rd", 0.5, example_inputs=x, scope={"skip_output": False}, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1 / 88)
    # the identity's off-diagonal zeros cost nothing: the first layer goes first (56 free zeros of 64)
    assert float((~get_mask(model[0])).float().mean()) > float((~get_mask(model[2])).float().mean())
    with pytest.raises(ValueError, match="example_inputs"):
        pk.prune_(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "rd", 0.5, progress=False)
