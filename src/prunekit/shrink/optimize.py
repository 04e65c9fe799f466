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

``cap=(marked, k)`` adds one side condition to either: at most ``k`` groups may pick their marked option
(``marked[g]``, or None for a group with none) — per-layer shapes mark each block's removal and cap it at
all blocks but one, so a plan can never remove every block.

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


Cap = tuple[Sequence[int | None], int]


def choose(groups: Sequence[Sequence[Option]], budget: float, method: str = "milp", cap: Cap | None = None) -> list[int]:
    """The index of the option chosen in every group (see the module docstring)."""
    if method not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {method!r}")
    _check(groups, budget)
    if cap is not None:
        marked, k = cap
        if len(marked) != len(groups) or k < 0:
            raise ValueError(f"cap needs one marked option (or None) per group and a count >= 0, got {len(marked)} "
                             f"marks for {len(groups)} groups and count {k}")
        # the cheapest choice within the cap: each group's cheapest unmarked option, then the k marked options
        # that save the most over it (a group with only its marked option must take it)
        base, gains = 0.0, []
        for g, grp in enumerate(groups):
            m = marked[g]
            rest = [o.cost for i, o in enumerate(grp) if i != m]
            if not rest:
                base += grp[m].cost  # type: ignore[index]
                gains.append(-math.inf)
                continue
            base += min(rest)
            if m is not None:
                gains.append(min(rest) - grp[m].cost)
        forced = sum(1 for x in gains if x == -math.inf)
        if forced > k:
            raise ValueError(f"{forced} groups offer only their capped option, more than the {k} allowed")
        cheapest = base - sum(sorted((x for x in gains if x > 0 and x != -math.inf), reverse=True)[:k - forced])
        if cheapest > budget:
            raise ValueError(f"the budget {budget:g} cannot be met with at most {k} of the capped options (every "
                             f"block removed but one costs {cheapest:g})")
    return _milp(groups, budget, cap) if method == "milp" else _greedy(groups, budget, cap)


def _milp(groups: Sequence[Sequence[Option]], budget: float, cap: Cap | None = None) -> list[int]:
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
    offsets = np.cumsum([0, *sizes[:-1]])
    extra = []
    if cap is not None:
        row = np.zeros((1, n))
        for g, m in enumerate(cap[0]):
            if m is not None:
                row[0, offsets[g] + m] = 1
        extra.append(LinearConstraint(row, -np.inf, cap[1]))
    limit = float(budget)
    for _ in range(4):
        res = milp(value, integrality=np.ones(n), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cost[None, :], -np.inf, limit), *extra],
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


def _greedy(groups: Sequence[Sequence[Option]], budget: float, cap: Cap | None = None) -> list[int]:
    # each group's options from costliest to cheapest; options that cost more and lose more than a cheaper one
    # are never worth a step, but stepping over them is allowed (the step goes to any cheaper option)
    order = [sorted(range(len(g)), key=lambda i: (-g[i].cost, g[i].value)) for g in groups]
    at = [0] * len(groups)  # position in order[g]
    spent = sum(groups[g][order[g][0]].cost for g in range(len(groups)))
    marked = cap[0] if cap is not None else [None] * len(groups)

    def capped() -> int:
        return sum(1 for g in range(len(groups)) if marked[g] is not None and order[g][at[g]] == marked[g])

    while spent > budget:
        best, best_rate = None, math.inf
        full = cap is not None and capped() >= cap[1]
        for g, grp in enumerate(groups):
            here = grp[order[g][at[g]]]
            for j in range(at[g] + 1, len(order[g])):
                if full and order[g][j] == marked[g] and order[g][at[g]] != marked[g]:
                    continue  # the cap is reached: no further group may step onto its marked option
                there = grp[order[g][j]]
                saved = here.cost - there.cost
                if saved <= 0:
                    continue
                rate = (there.value - here.value) / saved
                if rate < best_rate:
                    best, best_rate = (g, j), rate
        if best is None:  # without a cap unreachable after _check; with one, greedy's earlier steps can block it
            if cap is not None:
                raise ValueError(f"the greedy optimizer met the cap of {cap[1]} capped options before the budget "
                                 f"{budget:g}; use optimizer='milp', which searches every combination")
            raise ValueError(f"the budget {budget:g} cannot be met")
        g, j = best
        spent -= groups[g][order[g][at[g]]].cost - groups[g][order[g][j]].cost
        at[g] = j
    return [order[g][at[g]] for g in range(len(groups))]
