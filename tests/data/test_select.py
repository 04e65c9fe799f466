import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.data import STRATEGIES, select
from prunekit.data.select import capped_allocation


def test_hardest_and_easiest_rank_by_score_with_ties_to_lower_index():
    s = np.array([0.5, 3.0, 1.0, 3.0, -2.0, 0.0])
    assert select(s, keep=0.5, strategy="hardest").tolist() == [1, 2, 3]
    assert select(s, keep=0.5, strategy="easiest").tolist() == [0, 4, 5]
    assert select(s, keep=1 / 6, strategy="hardest").tolist() == [1]  # tie 1 vs 3 → lower index


def test_random_is_seeded_and_sized():
    s = np.zeros(1000)
    a, b, c = (select(s, 0.1, "random", seed=k) for k in (0, 0, 1))
    assert len(a) == 100 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_class_balanced_gives_each_class_the_same_share_hardest_first():
    labels = np.repeat([0, 1, 2], [50, 30, 4])
    s = np.arange(84, dtype=float)
    keep = select(s, keep=30 / 84, strategy="class_balanced", labels=labels)
    counts = np.bincount(labels[keep], minlength=3)
    assert counts.tolist() == [13, 13, 4]  # the small class gives all it has, the rest is shared
    assert keep[labels[keep] == 0].tolist() == list(range(37, 50))  # hardest of class 0


def test_ccs_cuts_the_hardest_beta_and_spreads_the_budget_over_bins():
    # Ten strata of scores: bin 3 holds 5 examples, every other bin 100.
    sizes = [100, 100, 100, 5, 100, 100, 100, 100, 100, 100]
    s = np.concatenate([np.full(n, b + 0.5) for b, n in enumerate(sizes)]) + np.linspace(0, 0.1, sum(sizes))
    keep = select(s, keep=50 / len(s), strategy="ccs", beta=0.0, bins=10, seed=0)
    per_bin = np.bincount(np.floor(s[keep]).astype(int), minlength=10)
    assert per_bin.tolist() == [5] * 10  # small bin takes all 5, the other 45 split evenly
    cut = select(s, keep=50 / len(s), strategy="ccs", beta=0.1, bins=10, seed=0)
    hardest_tenth = np.argsort(-s)[: int(0.1 * len(s))]
    assert not set(cut.tolist()) & set(hardest_tenth.tolist())


def test_ccs_covers_the_score_range_where_hardest_does_not():
    rng = np.random.default_rng(0)
    s = rng.normal(size=5000)
    ccs = select(s, keep=0.1, strategy="ccs", beta=0.1, seed=0)
    hard = select(s, keep=0.1, strategy="hardest")
    assert s[ccs].min() < np.quantile(s, 0.01) and s[hard].min() > np.quantile(s, 0.85)


def test_density_keeps_more_of_complex_clusters_by_softmax():
    clusters = np.repeat([0, 1], 100)
    complexity = np.where(clusters == 0, 1.0, 0.0)
    keep = select(complexity, keep=0.5, strategy="density", labels=clusters, temperature=1.0, seed=0)
    counts = np.bincount(clusters[keep], minlength=2)
    want = 100 * np.exp(1) / (np.exp(1) + 1)
    assert counts.sum() == 100 and abs(counts[0] - want) <= 1


def test_capped_allocation_redistributes_what_full_groups_cannot_take():
    assert capped_allocation(np.ones(3), np.array([1, 10, 10]), 9).tolist() == [1, 4, 4]
    assert capped_allocation(np.array([0.9, 0.1]), np.array([3, 100]), 50).tolist() == [3, 47]


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), "half", True])
def test_keep_outside_unit_interval_is_rejected(keep):
    with pytest.raises((ValueError, TypeError), match=r"keep must be a (number in \(0, 1\]|real number)"):
        select(np.ones(10), keep=keep)


def test_numpy_and_tensor_keep_are_accepted():
    import torch

    assert len(select(np.arange(10.0), keep=np.float32(0.5))) == 5
    assert len(select(np.arange(10.0), keep=torch.tensor(0.3))) == 3


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        select(np.array([1.0, np.nan, 2.0]), keep=0.5)
    with pytest.raises(ValueError, match="needs labels="):
        select(np.ones(10), keep=0.5, strategy="class_balanced")
    with pytest.raises(ValueError, match="needs labels="):
        select(np.ones(10), keep=0.5, strategy="density")
    with pytest.raises(ValueError, match="one entry per example"):
        select(np.ones(10), keep=0.5, strategy="class_balanced", labels=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        select(np.ones(10), keep=0.5, strategy="best")
    with pytest.raises(ValueError, match="unknown option 'beta'; allowed: keep, seed, strategy"):
        select(np.ones(10), keep=0.5, strategy="hardest", beta=0.2)
    with pytest.raises(ValueError, match="unknown option 'betta' \\(did you mean 'beta'\\?\\)"):
        select(np.ones(10), keep=0.5, strategy="ccs", betta=0.2)
    with pytest.raises(ValueError, match="beta must be a number in \\[0, 1\\)"):
        select(np.ones(10), keep=0.5, strategy="ccs", beta=1.5)
    with pytest.raises(ValueError, match="temperature.*positive"):
        select(np.ones(10), keep=0.5, strategy="density", labels=np.zeros(10, int), temperature=0)
    with pytest.raises(ValueError, match="1-D"):
        select(np.ones((3, 3)), keep=0.5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), keep=st.floats(0.001, 1.0), strategy=st.sampled_from(list(STRATEGIES)),
       seed=st.integers(0, 5))
def test_every_strategy_returns_sorted_unique_indices_of_the_budget(n, keep, strategy, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    labels = rng.integers(0, 4, size=n)
    out = select(s, keep=keep, strategy=strategy, labels=labels, seed=seed)
    assert len(out) == max(1, min(n, round(keep * n)))
    assert np.all(np.diff(out) > 0) and out.min() >= 0 and out.max() < n


def test_a_config_and_the_keyword_form_are_the_same_call():
    from prunekit.data import CCSConfig

    s = np.random.default_rng(0).normal(size=500)
    cfg = CCSConfig(keep=0.2, beta=0.05, bins=10, seed=3)
    a = select(s, cfg)
    b = select(s, keep=0.2, strategy="ccs", beta=0.05, bins=10, seed=3)
    c = select(s, {"strategy": "ccs", "keep": 0.2, "beta": 0.05, "bins": 10, "seed": 3})
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert CCSConfig.from_yaml(cfg.to_yaml()) == cfg
    assert STRATEGIES.parse_config(cfg.to_dict()) == cfg
    assert np.array_equal(select(s, cfg, seed=4), select(s, keep=0.2, strategy="ccs", beta=0.05, bins=10, seed=4))


def test_every_strategy_has_a_config_that_round_trips():
    for name in STRATEGIES:
        cls = STRATEGIES.config(name)
        cfg = cls(keep=0.5)
        assert cfg.strategy == name and cls.from_json(cfg.to_json()) == cfg


def test_density_budgets_solve_the_papers_quadratic_program():
    from prunekit.data import dbp_budgets

    # Unconstrained: the budgets are softmax(C/τ)·total, rounded to sum exactly.
    c = np.array([0.1, 0.2, 0.3])
    p = np.exp(c / 0.1) / np.exp(c / 0.1).sum()
    got = dbp_budgets(c, np.array([1000, 1000, 1000]), 300, temperature=0.1, min_keep=0)
    assert got.sum() == 300 and np.abs(got - p * 300).max() <= 1
    # A small cluster is capped at its size; the QP shifts the rest equally (x = clip(p·N + λ)), not in proportion.
    got = dbp_budgets(np.array([1.0, 0.0, 0.0]), np.array([10, 100, 100]), 60, temperature=0.1, min_keep=0)
    assert got.tolist() == [10, 25, 25]
    # min_keep gives every cluster at least that many (or all it has).
    got = dbp_budgets(np.array([5.0, 0.0, 0.0]), np.array([100, 1, 100]), 50, temperature=0.1, min_keep=3)
    assert got.tolist() == [46, 1, 3]
    with pytest.raises(ValueError, match="needs 6 examples, more than the 5 kept"):
        dbp_budgets(np.zeros(3), np.array([10, 10, 10]), 5, min_keep=2)
