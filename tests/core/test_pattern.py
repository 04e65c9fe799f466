import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core.pattern import Pattern, check_pattern, mask_from_scores, parse_pattern, pattern_holds


def test_parse_known_patterns():
    assert parse_pattern("unstructured") == Pattern("unstructured")
    assert parse_pattern("row") == Pattern("row")
    assert parse_pattern("2:4") == Pattern("nm", n=2, m=4)
    assert parse_pattern("block:4x2") == Pattern("block", rows=4, cols=2)
    assert parse_pattern("4:8").fixed_sparsity == 0.5
    assert str(parse_pattern("block:4x4")) == "block:4x4"


@pytest.mark.parametrize("bad", ["2:2", "0:4", "5:4", "block:1x1", "diagonal", "", "2-4"])
def test_parse_rejects_bad_patterns_with_known_forms(bad):
    with pytest.raises(ValueError, match="N:M|known|block"):
        parse_pattern(bad)


def test_nm_needs_divisible_input_dimension():
    with pytest.raises(ValueError, match="divisible by 4"):
        check_pattern(parse_pattern("2:4"), (8, 6), "fc")
    check_pattern(parse_pattern("2:4"), (8, 8), "fc")
    with pytest.raises(ValueError, match="divisible"):
        check_pattern(parse_pattern("block:4x4"), (6, 8), "fc")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 40), frac=st.floats(0, 1), seed=st.integers(0, 1000))
def test_unstructured_prunes_exactly_n(rows, cols, frac, seed):
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    n = round(frac * rows * cols)
    keep = mask_from_scores(scores, Pattern("unstructured"), n)
    assert int((~keep).sum()) == n
    if 0 < n < rows * cols:  # everything pruned scores no higher than anything kept
        assert scores[~keep].max() <= scores[keep].min()


@settings(max_examples=40, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (1, 4), (3, 8)]), rows=st.integers(1, 6),
       groups=st.integers(1, 5), conv=st.booleans(), seed=st.integers(0, 1000))
def test_nm_every_group_valid(nm, rows, groups, conv, seed):
    n, m = nm
    shape = (rows, groups * m, 3, 3) if conv else (rows, groups * m)
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    pat = Pattern("nm", n=n, m=m)
    keep = mask_from_scores(scores, pat, 0)
    assert pattern_holds(keep, pat)
    assert int(keep.sum()) == keep.numel() * n // m  # exactly N kept in every group
    # groups run along the input dimension: for a conv, at each kernel position
    view = keep.movedim(1, -1).reshape(-1, m) if conv else keep.reshape(-1, m)
    assert bool((view.sum(-1) == n).all())


def test_nm_keeps_the_largest_in_each_group():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    keep = mask_from_scores(scores, Pattern("nm", n=2, m=4), 0)
    assert keep.tolist() == [[False, True, True, False, True, True, False, False]]


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(2, 30), frac=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_row_pattern_has_equal_sparsity_per_row(rows, cols, frac, seed):
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    keep = mask_from_scores(scores, Pattern("row"), round(frac * rows * cols))
    per_row = keep.sum(1)
    assert bool((per_row == per_row[0]).all())
    assert pattern_holds(keep, Pattern("row"))


@settings(max_examples=30, deadline=None)
@given(br=st.sampled_from([1, 2, 4]), bc=st.sampled_from([2, 4]), nb_r=st.integers(1, 4), nb_c=st.integers(1, 4),
       frac=st.floats(0, 1), conv=st.booleans(), seed=st.integers(0, 99))
def test_block_pattern_prunes_whole_blocks(br, bc, nb_r, nb_c, frac, conv, seed):
    shape = (br * nb_r, bc * nb_c, 3, 3) if conv else (br * nb_r, bc * nb_c)
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    pat = Pattern("block", rows=br, cols=bc)
    numel = scores.numel()
    block = numel // (nb_r * nb_c)
    n_blocks = round(frac * nb_r * nb_c)
    keep = mask_from_scores(scores, pat, n_blocks * block)
    assert pattern_holds(keep, pat)
    assert int((~keep).sum()) == n_blocks * block


def test_ties_break_deterministically_toward_lower_index():
    scores = torch.ones(2, 8)  # all tied, as Q4-dequantized weights often are
    keep = mask_from_scores(scores, Pattern("unstructured"), 5)
    assert (~keep).reshape(-1).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(keep, mask_from_scores(scores, Pattern("unstructured"), 5))


def test_already_pruned_entries_go_first():
    scores = torch.tensor([[5.0, float("-inf"), 1.0, 2.0]])
    keep = mask_from_scores(scores, Pattern("unstructured"), 2)
    assert keep.tolist() == [[True, False, False, True]]
