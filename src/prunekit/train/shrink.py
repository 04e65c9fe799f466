"""Iterative soft shrinkage (ISS-P; Zhang et al., "Iterative Soft Shrinkage Learning for Efficient Image
Super-Resolution", ICCV 2023).

Instead of zeroing the unimportant weights, every ``every`` steps the weights that would be pruned at the
schedule's current sparsity are multiplied by ``1 - shrink``; they keep receiving gradients, so the sparse
structure can still change while training. At ``end_step`` the model is pruned for real (masks) to
``sparsity``. The paper holds the final sparsity from the start and shrinks at every step
(``schedule="constant", every=1``); ``shrink=1`` zeroes the chosen weights instead, which is its baseline,
iterative hard thresholding (IHT): the zeroed weights still get gradients and may come back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.allocate import allocate
from ..core.mask import get_mask, weight_of
from ..core.pattern import mask_from_scores, parse_pattern
from ..core.deprecation import renamed_args
from ..methods.prune import apply_plan_, plan_prune
from .schedule import ScheduleSpec, check_sparsity, check_window, resolve_schedule, sparsity_at


class SoftShrink:
    """ISS-P: shrink the currently least important weights by a fraction, prune hard at the end.

    Call :meth:`step` after each optimizer step. ``shrink`` ∈ (0, 1] is the fraction taken off an
    unimportant weight at each update (1: zeroed, IHT); ``allocation`` spreads the sparsity over layers.
    """

    @renamed_args(final_sparsity="sparsity")
    def __init__(self, model: nn.Module, sparsity: float = 0.9, *, start_step: int = 0, end_step: int = 1000,
                 every: int = 100, shrink: float = 0.1, schedule: ScheduleSpec = "cubic",
                 allocation: str = "uniform", scope: Any = None) -> None:
        self.final_sparsity = check_sparsity(sparsity, "sparsity")
        check_window(start_step, end_step, every)
        if not 0 < shrink <= 1:
            raise ValueError(f"shrink must be in (0, 1], the fraction taken off unimportant weights (1 zeroes them: "
                             f"iterative hard thresholding); got {shrink}")
        self.schedule_fn = resolve_schedule(schedule)
        self.plan = plan_prune(model, "magnitude", self.final_sparsity, allocation=allocation, scope=scope,
                               progress=False)
        self.model, self.targets = model, self.plan.targets
        self.start_step, self.end_step, self.every, self.shrink = start_step, end_step, every, shrink
        self.allocation, self.scope = allocation, scope
        self.step_count = 0
        self.history: list[dict[str, float]] = []

    def step(self) -> None:
        """Advance one step: shrink when due, prune with masks at ``end_step``."""
        self.step_count += 1
        s = self.step_count
        if s == self.end_step:
            apply_plan_(self.model, self.plan)
            self.history.append({"step": s, "target": self.final_sparsity, "pruned": 1.0})
        elif self.start_step <= s < self.end_step and (s - self.start_step) % self.every == 0:
            self.shrink_(sparsity_at(s, initial=0.0, final=self.final_sparsity, start_step=self.start_step,
                                     end_step=self.end_step, schedule=self.schedule_fn))

    def shrink_(self, sparsity: float) -> int:
        """Multiply the ``sparsity`` fraction of least-magnitude weights by ``1 - shrink``; returns how many."""
        scores = {}
        for t in self.targets:
            w = getattr(t.module, t.param).detach().abs().float()
            mask = get_mask(t.module)
            scores[t.name] = w if mask is None else w.masked_fill(~mask, float("-inf"))
        counts = allocate(scores, sparsity, self.allocation)
        unstructured = parse_pattern("unstructured")
        n = 0
        with torch.no_grad():
            for t in self.targets:
                low = ~mask_from_scores(scores[t.name], unstructured, counts[t.name])
                weight_of(t.module)[low] *= 1 - self.shrink
                n += int(low.sum())
        self.history.append({"step": self.step_count, "target": sparsity, "shrunk": float(n)})
        return n

    def state_dict(self) -> dict[str, Any]:
        """The step count and history (the weights live in the model's own state dict)."""
        return {"step_count": self.step_count, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.step_count = int(state["step_count"])
        self.history = [dict(h) for h in state["history"]]
