import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core.allocate import ALLOCATIONS, allocate, erk_densities, lamp_scores

shapes_st = st.lists(
    st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40)),
              st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3), st.just(3))),
    min_size=1, max_size=5,
)


def _scores(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return {f"layer{i}": torch.rand(sh, generator=gen) for i, sh in enumerate(shapes)}


@settings(max_examples=60, deadline=None)
@given(shapes=shapes_st, sparsity=st.floats(0, 0.95), seed=st.integers(0, 999),
       method=st.sampled_from(["uniform", "global", "erk", "lamp"]))
def test_total_within_one_weight_per_layer(shapes, sparsity, seed, method):
    scores = _scores(shapes, seed)
    counts = allocate(scores, sparsity, method)
    total = sum(s.numel() for s in scores.values())
    assert all(0 <= counts[n] <= s.numel() for n, s in scores.items())
    assert abs(sum(counts.values()) - sparsity * total) <= len(scores) / 2 + 1e-6


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_st, sparsity=st.floats(0, 0.9), seed=st.integers(0, 999))
def test_global_is_exact_and_thresholded(shapes, sparsity, seed):
    scores = _scores(shapes, seed)
    counts = allocate(scores, sparsity, "global")
    total = sum(s.numel() for s in scores.values())
    assert sum(counts.values()) == round(sparsity * total)
    # every pruned score is no larger than every kept one, across layers
    pruned = [torch.sort(s.flatten()).values[: counts[n]] for n, s in scores.items()]
    kept = [torch.sort(s.flatten()).values[counts[n]:] for n, s in scores.items()]
    pmax = max((p.max().item() for p in pruned if p.numel()), default=-math.inf)
    kmin = min((k.min().item() for k in kept if k.numel()), default=math.inf)
    assert pmax <= kmin


def test_global_floor_keeps_the_floor_and_the_total():
    # layer "small" has tiny scores: plain global would wipe it out
    scores = {"small": torch.full((10, 10), 1e-3) + torch.rand(10, 10) * 1e-4, "big": torch.rand(50, 50) + 1}
    plain = allocate(scores, 0.5, "global")
    assert plain["small"] == 100
    floored = allocate(scores, 0.5, "global_floor", floor=0.1)
    assert floored["small"] == 90
    assert sum(floored.values()) == round(0.5 * 2600)
    with pytest.raises(ValueError, match="unreachable"):
        allocate(scores, 0.95, "global_floor", floor=0.2)


def test_erk_densities_weighted_mean_and_shape_dependence():
    shapes = {"a": (16, 8, 3, 3), "b": (64, 64, 3, 3), "c": (10, 256)}
    dens = erk_densities(shapes, 0.2)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    mean = sum(dens[n] * numel[n] for n in shapes) / sum(numel.values())
    assert mean == pytest.approx(0.2)
    assert dens["a"] > dens["b"]  # the smaller layer stays denser
    dense_case = erk_densities({"tiny": (2, 2), "huge": (512, 512)}, 0.5)
    assert dense_case["tiny"] == 1.0  # capped at dense, the rest redistributed
    assert (4 * 1.0 + 512 * 512 * dense_case["huge"]) / (4 + 512 * 512) == pytest.approx(0.5)


def test_lamp_scores_match_the_definition():
    w = torch.tensor([3.0, 1.0, 2.0])
    # sorted ascending 1,2,3: 1/(1+4+9), 4/(4+9), 9/9
    assert lamp_scores(w).tolist() == pytest.approx([1.0, 1 / 14, 4 / 13])
    with pytest.raises(ValueError, match="non-negative"):
        lamp_scores(torch.tensor([-1.0, 2.0]))


def test_unknown_allocation_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: .*erk.*global"):
        allocate({"a": torch.rand(3, 3)}, 0.5, "fancy")
    assert {"uniform", "global", "global_floor", "erk", "lamp"} <= set(ALLOCATIONS.names())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.2])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        allocate({"a": torch.rand(3, 3)}, bad, "uniform")
