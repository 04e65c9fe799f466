"""Choosing one option per group under a budget: the multiple-choice knapsack behind per-layer shapes.

Each group (one layer's MLP, one layer's attention) offers options, each with a cost (parameters, or
measured seconds) and a value (the calibration-loss increase it causes). :func:`choose` picks exactly one
option per group so that the summed cost stays within the budget and the summed value is smallest:

- ``"milp"``: exact, as Puzzletron's MIP: binary x[g, o], Σ_o x[g, o] = 1 for every group, Σ cost·x ≤
  budget, minimise Σ value·x, solved by HiGHS through :func:`scipy.optimize.milp` with no optimality gap.
  The solver works in floating point, so the chosen options' cost is re-added exactly and, if it is over,
  the problem is solved again with the budget lowered by the overshoot.
- ``"greedy"``: start from every group's costliest option and, while over the budget, take the single
  step (one group to its next cheaper option) with the smallest value increase per unit of cost saved.

Both raise one clear ValueError when even the cheapest option of every group is over the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

OPTIMIZERS = ("milp", "greedy")


@dataclass(frozen=True)
class Option:
    """One choice of a group: what it costs and what it loses."""

    cost: float
    value: float


def _check(groups: Sequence[Sequence[Option]], budget: float) -> None:
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("every group needs at least one option")
    cheapest = sum(min(o.cost for o in g) for g in groups)
    if cheapest > budget:
        raise ValueError(f"the budget {budget:g} cannot be met: the cheapest option of every group costs {cheapest:g}")
    for g in groups:
        for o in g:
            if not (math.isfinite(o.cost) and math.isfinite(o.value)):
                raise ValueError(f"option costs and values must be finite numbers, got {o}")


def total(groups: Sequence[Sequence[Option]], picks: Sequence[int]) -> tuple[float, float]:
    """(cost, value) of one option per group."""
    return (sum(groups[g][i].cost for g, i in enumerate(picks)), sum(groups[g][i].value for g, i in enumerate(picks)))


def choose(groups: Sequence[Sequence[Option]], budget: float, method: str = "milp") -> list[int]:
    """The index of the option chosen in every group (see the module docstring)."""
    if method not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {method!r}")
    _check(groups, budget)
    return _milp(groups, budget) if method == "milp" else _greedy(groups, budget)


def _milp(groups: Sequence[Sequence[Option]], budget: float) -> list[int]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [len(g) for g in groups]
    n = sum(sizes)
    cost = np.array([o.cost for g in groups for o in g], dtype=np.float64)
    value = np.array([o.value for g in groups for o in g], dtype=np.float64)
    one = np.zeros((len(groups), n))
    start = 0
    for gi, k in enumerate(sizes):
        one[gi, start:start + k] = 1
        start += k
    limit = float(budget)
    for _ in range(4):
        res = milp(value, integrality=np.ones(n), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cost[None, :], -np.inf, limit)],
                   options={"mip_rel_gap": 0.0, "presolve": True})
        if res.x is None:
            raise ValueError(f"the solver found no choice under the budget {budget:g} ({res.message})")
        picks, start = [], 0
        for k in sizes:
            picks.append(int(np.argmax(res.x[start:start + k])))
            start += k
        spent = total(groups, picks)[0]
        if spent <= budget:
            return picks
        limit -= spent - budget  # the solver's feasibility tolerance let it over: tighten by the overshoot
    raise RuntimeError("the MILP solver kept exceeding the budget; use optimizer='greedy' and please report this")


def _greedy(groups: Sequence[Sequence[Option]], budget: float) -> list[int]:
    # each group's options from costliest to cheapest; options that cost more and lose more than a cheaper one
    # are never worth a step, but stepping over them is allowed (the step goes to any cheaper option)
    order = [sorted(range(len(g)), key=lambda i: (-g[i].cost, g[i].value)) for g in groups]
    at = [0] * len(groups)  # position in order[g]
    spent = sum(groups[g][order[g][0]].cost for g in range(len(groups)))
    while spent > budget:
        best, best_rate = None, math.inf
        for g, grp in enumerate(groups):
            here = grp[order[g][at[g]]]
            for j in range(at[g] + 1, len(order[g])):
                there = grp[order[g][j]]
                saved = here.cost - there.cost
                if saved <= 0:
                    continue
                rate = (there.value - here.value) / saved
                if rate < best_rate:
                    best, best_rate = (g, j), rate
        if best is None:  # unreachable after _check, kept as a guard
            raise ValueError(f"the budget {budget:g} cannot be met")
        g, j = best
        spent -= groups[g][order[g][at[g]]].cost - groups[g][order[g][j]].cost
        at[g] = j
    return [order[g][at[g]] for g in range(len(groups))]
