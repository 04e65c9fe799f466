"""The multiple-choice knapsack: the MILP finds the brute-force optimum, greedy stays within the budget, and an
impossible budget is one clear error."""

import itertools
import random

import pytest

from prunekit.shrink.optimize import Option, choose, total


def _instance(seed: int, groups: int = 4, options: int = 3):
    rng = random.Random(seed)
    out = []
    for _ in range(groups):
        # integer costs (parameter counts) and values with ties, as the real tables have
        out.append([Option(rng.randint(-50, 0) if i else 0, rng.choice([0.0, 0.5, 1.0, rng.random()]) if i else 0.0)
                    for i in range(options)])
    return out


def _brute(groups, budget, marked=None, k=None):
    best = None
    for picks in itertools.product(*[range(len(g)) for g in groups]):
        if marked is not None and sum(1 for g, i in enumerate(picks) if marked[g] == i) > k:
            continue
        c, v = total(groups, picks)
        if c <= budget and (best is None or v < best):
            best = v
    return best


@pytest.mark.parametrize("seed", range(12))
def test_milp_finds_the_brute_force_optimum_and_greedy_a_feasible_choice(seed):
    groups = _instance(seed)
    cheapest = sum(min(o.cost for o in g) for g in groups)
    budget = random.Random(seed).randint(cheapest, 0)
    picks = choose(groups, budget, "milp")
    cost, value = total(groups, picks)
    assert cost <= budget
    # values are sums of at most 4 floats in [0, 1]: the solver's optimum equals the enumeration's to 1e-9
    assert value == pytest.approx(_brute(groups, budget), abs=1e-9)
    g_cost, g_value = total(groups, choose(groups, budget, "greedy"))
    assert g_cost <= budget and g_value >= value - 1e-9


def test_milp_never_exceeds_a_budget_met_with_no_slack():
    groups = [[Option(0, 0.0), Option(-1_000_003, 1.0)], [Option(0, 0.0), Option(-999_999, 0.5)]]
    picks = choose(groups, -1_000_003, "milp")  # only the first group's cut meets it exactly
    assert picks == [1, 0] and total(groups, picks)[0] == -1_000_003


def test_an_impossible_budget_is_one_clear_error():
    groups = [[Option(0, 0.0), Option(-5, 1.0)]]
    with pytest.raises(ValueError, match="cannot be met"):
        choose(groups, -6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        choose(groups, 0, "annealing")


@pytest.mark.parametrize("seed", range(8))
def test_a_capped_option_is_chosen_at_most_k_times_by_both_optimizers(seed):
    """Per-layer shapes cap block removal at all blocks but one: a plan removing every block left nothing to run
    (adapt's second round on a 2-block model chose it, because dropping a random block lowered the loss)."""
    groups = _instance(seed)
    marked = [len(g) - 1 for g in groups]
    for g in groups:  # the marked option is the cheapest and loses nothing: without the cap every group takes it
        g[-1] = Option(-100, 0.0)
    k = len(groups) - 1
    budget = random.Random(seed).randint(-100 * k - 50, -100 * k + 50)
    expected = _brute(groups, budget, marked, k)
    if expected is None:
        with pytest.raises(ValueError, match="cannot be met"):
            choose(groups, budget, "milp", (marked, k))
        return
    for method in ("milp", "greedy"):
        try:
            picks = choose(groups, budget, method, (marked, k))
        except ValueError as e:  # greedy cannot undo a step: under a cap it may stop short, and says so
            assert method == "greedy" and "use optimizer='milp'" in str(e)
            continue
        assert sum(1 for g, i in enumerate(picks) if marked[g] == i) <= k
        assert total(groups, picks)[0] <= budget
    # values are sums of at most 4 floats in [0, 1]: the solver's optimum equals the enumeration's to 1e-9
    assert total(groups, choose(groups, budget, "milp", (marked, k)))[1] == pytest.approx(expected, abs=1e-9)
    assert choose(groups, -400, "milp") == marked  # uncapped, every group takes its marked option


def test_a_cap_the_budget_cannot_meet_is_one_clear_error():
    groups = [[Option(0, 0.0), Option(-10, 0.0)], [Option(0, 0.0), Option(-10, 0.0)]]
    with pytest.raises(ValueError, match="at most 1 of the capped options"):
        choose(groups, -15, "milp", ([1, 1], 1))
    with pytest.raises(ValueError, match="one marked option"):
        choose(groups, -5, "milp", ([1], 1))
