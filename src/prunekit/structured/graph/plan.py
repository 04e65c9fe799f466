"""Choosing what to remove, and repairing the choice until the pruned copy passes the check.

A failed check ends in one of three ways: the call that diverged was a reshape whose size moved with
another tensor's width — the two are *tied* (united position by position) and the groups are read
again; the check names the groups whose channels flowed into that call — they are pinned (with the
same groups of every identical block); or nothing can be named — the groups near the failing module
are bisected. A model whose format describes its widths (a Hugging Face config) brings a
:class:`ModelFormat` (``prunekit.structured.transformers.config.HFFormat``): the description is
updated on every trial copy, must still describe the pruned model (``from_pretrained`` builds the same
shapes), may ask for widths that stay multiples of a number (the hidden width of the head count),
and may tie widths it derives from one another. The graph engine itself knows no model family.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from ...infra.calling import call_model
from .check import Kept, blamed_groups, first_failing, groups_in_module, light_copy, run_checked, siblings, tie_sizes
from .depgraph import DependencyGraph
from .groups import Group, choose_removed, find_groups
from .removal import remove_
from .report import count_macs
from .trace import recording_mode

MAX_REPAIRS = 200
Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # (tensor, shape the format builds, shape the model has)


class ModelFormat(Protocol):
    """What a model's own description of its widths (a Hugging Face config) adds to the plan."""

    def multiple(self, group: Group) -> int:
        """The count that the group's width must stay a multiple of (1: any)."""

    def update_(self, model: nn.Module) -> dict[str, Any]:
        """Write the pruned widths of ``model`` into its description; returns the fields changed."""

    def mismatches(self, model: nn.Module) -> list[Mismatch]:
        """Tensors whose shapes the description of ``model`` does not give (empty: it reloads)."""

    def tie(self, graph: DependencyGraph, wrong: list[Mismatch]) -> bool:
        """Unite widths that the description derives from one another; True when something was tied."""


def describe(g: Group) -> str:
    names = g.names
    return f"{len(g)} units of {names[0]}" + (f" (+{len(names) - 1} modules)" if len(names) > 1 else "")


class Planner:
    """Groups, scores and the plan of one structured-pruning call, repaired until the check passes."""

    def __init__(self, model: nn.Module, example_inputs: Any, graph: DependencyGraph,
                 score: Callable[[list[Group]], list[torch.Tensor]], *, round_to: int | None = None,
                 global_ranking: bool = False, form: ModelFormat | None = None) -> None:
        self.model, self.inputs, self.graph, self.score = model, example_inputs, graph, score
        self.round_to_asked, self.global_ranking, self.form = round_to, global_ranking, form
        self.reference = graph.output_shapes
        self.pinned_slots: set[int] = set()
        self.repaired: list[tuple[str, str]] = []
        self.ties = 0
        self.checks = 0
        self.regroup()

    # --- groups ---------------------------------------------------------------------------------
    def regroup(self) -> None:
        self.groups = find_groups(self.graph)
        pinned = {self.graph.find(s) for s in self.pinned_slots}
        self.active = {i for i, g in enumerate(self.groups) if not (set(g.units) & pinned)}
        self.unit_group = {u: i for i, g in enumerate(self.groups) for u in g.units}
        self.scores = self.score(self.groups) if self.groups else []
        self.align: dict[int, int] = {}
        if self.graph.multiple_of:
            slots = list(self.graph.multiple_of)
            for s, r in zip(slots, self.graph.roots(slots).tolist()):
                self.align[r] = max(self.align.get(r, 1), self.graph.multiple_of[s])
        self.round_to = [self._round(g) for g in self.groups]

    def _round(self, g: Group) -> int | None:
        """``round_to``, the multiple the model's format asks for (a transformer's hidden width stays a multiple
        of its head count) and the alignment kernels need (grouped expert matmuls: 16 bytes), together."""
        r = self.round_to_asked or 1
        for a in {self.align[u] for u in g.units if u in self.align} | {self.form.multiple(g) if self.form else 1}:
            r = math.lcm(r, a)
        return r if r > 1 else self.round_to_asked

    def pin(self, g: Group, why: str) -> None:
        i = self.groups.index(g)
        if i in self.active:
            self.active.discard(i)
            self.pinned_slots.update(g.units)
            self.repaired.append((describe(g), why[:200]))

    # --- choosing -------------------------------------------------------------------------------
    def choose(self, sparsity: float) -> set[int]:
        idx = sorted(self.active)
        removed: set[int] = set()
        by_round: dict[int | None, list[int]] = {}
        for i in idx:
            by_round.setdefault(self.round_to[i], []).append(i)
        for r, ids in by_round.items():
            removed |= choose_removed([self.groups[i] for i in ids], [self.scores[i] for i in ids], sparsity,
                                      global_pruning=self.global_ranking, round_to=r)
        return removed

    def trial(self, removed: set[int]) -> nn.Module:
        trial = light_copy(self.model)
        remove_(trial, self.graph, removed)
        if self.form is not None:
            self.form.update_(trial)
        return trial

    def _check(self, removed: set[int]) -> tuple[Any, nn.Module]:
        self.checks += 1
        trial = self.trial(removed)
        with recording_mode(trial):
            m = run_checked(trial, lambda t: call_model(t, self.inputs), self.graph, removed, self.reference)
        return m, trial

    def _fails(self, subset: list[Group], removed: set[int]) -> bool:
        units = {u for g in subset for u in g.units} & removed
        m, trial = self._check(units)
        return m is not None or (self.form is not None and bool(self.form.mismatches(trial)))

    def problem(self, removed: set[int]) -> tuple[str, list[Group], bool] | None:
        """Why the pruned copy is not acceptable: (message, groups to blame, whether a tie was made)."""
        m, trial = self._check(removed)
        if m is not None:
            if tie_sizes(self.graph, m, Kept(self.graph, removed)):
                return m.message, [], True
            bad = [g for g in blamed_groups(self.graph, removed, m.call, self.groups, self.unit_group)
                   if self.groups.index(g) in self.active]
            return m.message, bad or self._bisect(removed, m.call.where if m.call is not None else ""), False
        if self.form is not None:
            wrong = self.form.mismatches(trial)
            if wrong:
                names = ", ".join(sorted({n for n, _, _ in wrong})[:3])
                message = f"the config cannot describe the pruned {names}"
                if self.form.tie(self.graph, wrong):
                    return message, [], True
                if self._tie_config(wrong, removed):
                    return message, [], True
                keys = set()
                for name, exp, got in wrong:
                    keys |= {(name, d) for d, (e, a) in enumerate(zip(exp, got)) if e != a}
                units = {r for k in keys if k in self.graph.members
                         for r in self.graph.roots(self.graph.members[k].labels).tolist() if r in removed}
                bad = [self.groups[i] for i in sorted(self.active) if set(self.groups[i].units) & units]
                return message, bad or self._bisect(removed, ""), False
        return None

    def _bisect(self, removed: set[int], where: str) -> list[Group]:
        near = [g for g in groups_in_module(where, self.groups, self.active) if set(g.units) & removed]
        everything = [self.groups[i] for i in sorted(self.active) if set(self.groups[i].units) & removed]
        culprit = first_failing(near, lambda gs: self._fails(gs, removed)) or first_failing(
            everything, lambda gs: self._fails(gs, removed))
        return [culprit] if culprit is not None else []

    def _adopt(self, name: str, d: int, size: int, expected: int, kept: Kept) -> bool:
        """Make an unused tensor's dimension a member of the width the config says it has."""
        if name not in self.graph.refs:
            return False
        for other in self.graph.members.values():
            if len(other.labels) == size and kept.count(other.labels) == expected:
                mname, attr = self.graph.refs[name][0]
                self.graph.add_member(name, d, mname, "param", other.labels, self.model.get_submodule(mname))
                return True
        return False

    def _tie_config(self, wrong: list, removed: set[int]) -> bool:
        """A tensor the config sizes by another width (BERT's pooler is hidden × hidden): unite its
        positions with that width's, so both shrink together. True when a tie was made."""
        kept = Kept(self.graph, removed)
        for name, exp, got in wrong:
            for d, (e, a) in enumerate(zip(exp, got)):
                mine = self.graph.members.get((name, d))
                if e == a:
                    continue
                if mine is None:  # a tensor the forward never used (a mask token): give it the width it has
                    if self._adopt(name, d, a, e, kept):
                        return True
                    continue
                same = [m for (t, _), m in self.graph.members.items() if t == name and m.dim != d]
                others = same + [m for m in self.graph.members.values() if m.tensor != name]
                n = len(mine.labels)
                for other in others:
                    k = len(other.labels)
                    if n % k == 0 and kept.count(other.labels) * (n // k) == e:
                        big, small = mine.labels, other.labels  # sized r × that width (ConvNeXt's MLP: 4 × dim)
                    elif k % n == 0 and kept.count(other.labels) // (k // n) == e and k // n > 1:
                        big, small = other.labels, mine.labels  # sized that width / r (a bottleneck: dim / 4)
                    else:
                        continue
                    block = big.reshape(len(big) // len(small), len(small))
                    if all(np.array_equal(self.graph.roots(row), self.graph.roots(small)) for row in block):
                        continue
                    self.graph.unite_along(block, 1)
                    self.graph.union(block[0], small)
                    return True
        return False

    def plan(self, sparsity: float) -> set[int]:
        """The units to remove at ``sparsity``, after tying or pinning whatever the check finds."""
        for _ in range(MAX_REPAIRS):
            removed = self.choose(sparsity)
            if not removed:
                return removed
            found = self.problem(removed)
            if found is None:
                return removed
            message, bad, tied = found
            if tied:
                self.ties += 1
                self.regroup()
                continue
            if not bad:
                raise RuntimeError(
                    f"the pruned model does not run as the dependency graph predicts ({message}); the model likely "
                    "hard-codes a channel count (e.g. x.view(-1, 512)). Compute it from the tensor (x.flatten(1)) or "
                    "pass the layer that consumes it in ignore=[...]. The original model was left unchanged.")
            for g in bad + siblings(self.model, bad, self.groups, self.active):
                self.pin(g, message)
        raise RuntimeError(f"the pruned model still failed the check after {MAX_REPAIRS} repairs; "
                           "the original model was left unchanged")

    def plan_macs(self, goal: float, macs_before: int) -> set[int]:
        """``target="macs"``: the channel sparsity (by bisection) that removes ``goal`` of the MACs."""
        lo, hi = 0.0, 0.99
        best, best_s = self.plan(hi), hi  # ties and pins first, whatever the model cannot lose
        for _ in range(12):
            mid = (lo + hi) / 2
            removed = self.choose(mid)
            if count_macs(self.trial(removed), self.inputs) <= (1 - goal) * macs_before:
                hi, best, best_s = mid, removed, mid
            else:
                lo = mid
        return best if self.problem(best) is None else self.plan(best_s)

    def kept_after_check(self) -> set[int]:
        """Units pinned by repairs (for the report)."""
        pinned = {self.graph.find(s) for s in self.pinned_slots}
        return {u for g in self.groups for u in g.units if self.graph.find(u) in pinned}
