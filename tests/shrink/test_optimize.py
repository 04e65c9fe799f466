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


def _brute(groups, budget):
    best = None
    for picks in itertools.product(*[range(len(g)) for g in groups]):
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
