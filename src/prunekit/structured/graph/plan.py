"""Choosing what to remove, and repairing the choice until the pruned copy passes the check.

A failed check ends in one of three ways: the call that diverged was a reshape whose size moved with
another tensor's width — the two are *tied* (united position by position) and the groups are read
again; the check names the groups whose channels flowed into that call — they are pinned (with the
same groups of every identical block); or nothing can be named — the groups near the failing module
are bisected. On Hugging Face models the config must also still describe the pruned model
(``from_pretrained`` builds the same shapes), the hidden width stays a multiple of the number of
heads, and families that derive ``head_dim = hidden_size / num_attention_heads`` get their
attention widths tied to the hidden width up front.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...core.calling import call_model
from .check import Kept, blamed_groups, first_failing, groups_in_module, light_copy, run_checked, siblings, tie_sizes
from ..config import StructuredConfig
from .depgraph import DependencyGraph
from .groups import Group, choose_removed, find_groups
from ..transformers.config import input_embedding_prefix, mismatches, rebuild_mismatches, update_config_
from .removal import remove_
from .report import count_macs
from .trace import recording_mode

MAX_REPAIRS = 200


def describe(g: Group) -> str:
    names = g.names
    return f"{len(g)} units of {names[0]}" + (f" (+{len(names) - 1} modules)" if len(names) > 1 else "")


class Planner:
    """Groups, scores and the plan of one structured-pruning call, repaired until the check passes."""

    def __init__(self, model: nn.Module, example_inputs: Any, graph: DependencyGraph, cfg: StructuredConfig,
                 score: Callable[[list[Group]], list[torch.Tensor]], hf: bool) -> None:
        self.model, self.inputs, self.graph, self.cfg, self.score, self.hf = model, example_inputs, graph, cfg, score, hf
        self.reference = graph.output_shapes
        self.embed_prefix = input_embedding_prefix(model) if hf else None
        self.pinned_slots: set[int] = set()
        self.repaired: list[tuple[str, str]] = []
        self.ties = 0
        self.checks = 0
        self.heads = self._heads() if hf else None
        self.heads_tied = False
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

    def _heads(self) -> int | None:
        text = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        return getattr(text, "num_attention_heads", None)

    def _round(self, g: Group) -> int | None:
        """The hidden width of a transformer stays a multiple of its head count (configs check that), and
        widths that kernels need aligned (grouped expert matmuls: 16 bytes) stay multiples of it."""
        r = self.cfg.round_to or 1
        if self.heads and self.embed_prefix is not None and any(
                m.tensor.startswith(self.embed_prefix + ".") for m in g.members):
            r = r * self.heads // math.gcd(r, self.heads)
        for a in {self.align[u] for u in g.units if u in self.align}:
            r = r * a // math.gcd(r, a)
        return r if r > 1 else self.cfg.round_to

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
                                      global_pruning=self.cfg.allocation == "global", round_to=r)
        return removed

    def trial(self, removed: set[int]) -> nn.Module:
        trial = light_copy(self.model)
        remove_(trial, self.graph, removed)
        if self.hf:
            update_config_(trial)
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
        return m is not None or (self.hf and bool(rebuild_mismatches(trial)))

    def problem(self, removed: set[int]) -> tuple[str, list[Group], bool] | None:
        """Why the pruned copy is not acceptable: (message, groups to blame, whether a tie was made)."""
        m, trial = self._check(removed)
        if m is not None:
            if tie_sizes(self.graph, m, Kept(self.graph, removed)):
                return m.message, [], True
            bad = [g for g in blamed_groups(self.graph, removed, m.call, self.groups, self.unit_group)
                   if self.groups.index(g) in self.active]
            return m.message, bad or self._bisect(removed, m.call.where if m.call is not None else ""), False
        if self.hf:
            wrong = mismatches(trial)
            if wrong:
                names = ", ".join(sorted({n for n, _, _ in wrong})[:3])
                message = f"the config cannot describe the pruned {names}"
                if not self.heads_tied and any(".attn" in n or "attention" in n for n, _, _ in wrong):
                    self.heads_tied = True  # the family derives head_dim from the hidden width
                    if tie_derived_heads(self.model, self.graph, self.embed_prefix):
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


def tie_derived_heads(model: nn.Module, graph: DependencyGraph, embed_prefix: str | None) -> bool:
    """Families whose attention derives ``head_dim = hidden_size / num_attention_heads`` (BERT, GPT-2,
    OPT, ViT, …) can only reload if the attention widths shrink with the hidden width: the hidden
    channels h·d + j of every head-sized chunk and position j of every head in the attention
    projections are united, so both keep ``heads × d'`` channels. True when something was tied."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads, hidden = getattr(text, "num_attention_heads", None), getattr(text, "hidden_size", None)
    if not heads or not hidden or hidden % heads or embed_prefix is None:
        return False
    d = hidden // heads
    embed = [m for m in graph.members.values() if m.tensor.startswith(embed_prefix + ".") and len(m.labels) == hidden]
    if not embed:
        return False
    tied = False
    residual = embed[0].labels.reshape(heads, d)
    graph.unite_along(residual, 1)
    attn = [name for name, mod in model.named_modules() if type(mod).__name__.endswith("Attention")]
    for (tensor, dim), m in list(graph.members.items()):
        if m.role != "out" or not any(tensor.startswith(a + ".") for a in attn) or len(m.labels) % d:
            continue
        if np.array_equal(graph.roots(m.labels[:d]), graph.roots(residual[0])):
            continue  # already the hidden width (an output projection)
        block = m.labels.reshape(-1, d)
        graph.unite_along(block, 1)
        graph.union(block[0], residual[0])
        tied = True
    return tied
