"""Gradual magnitude pruning during training (Zhu & Gupta, "To prune, or not to prune", 2017).

    sched = Gradual(model, sparsity=0.9, start_step=1000, end_step=20000, every=100)
    for batch in loader:
        loss.backward(); opt.step(); sched.step()

Every ``every`` steps between ``start_step`` and ``end_step`` the model is pruned (with masks) up to the
schedule's sparsity, by one plan (:func:`prunekit.methods.plan_prune`, made once) applied at each step's
sparsity (:func:`prunekit.methods.apply_plan_`); masks only gain zeros, so optimizer steps never
revive a pruned weight. Any registered criterion, allocation and pattern can be used.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core.deprecation import renamed_args
from ..core.scope import targets_sparsity
from ..methods.prune import apply_plan_, plan_prune
from .schedule import ScheduleSpec, check_sparsity, check_window, resolve_schedule, sparsity_at
from .state import current_masks, replace_masks_


class Gradual:
    """Prune ``model`` step by step to ``sparsity`` (the final value; ``final_sparsity=`` is its deprecated name) on a cubic (or linear, or custom) schedule.

    Call :meth:`step` once after every optimizer step. ``method``, ``allocation``, ``pattern`` and
    ``scope`` are those of :func:`prunekit.prune_`; ``prune_options`` go to it as well (e.g. ``data``
    and ``loss_fn`` for data-driven criteria). ``history`` lists every pruning event; with
    ``keep_masks`` the masks of every event are kept too (the mask history).
    """

    @renamed_args(final_sparsity="sparsity")
    def __init__(self, model: nn.Module, sparsity: float = 0.9, *, start_step: int = 0, end_step: int = 1000,
                 every: int = 100, schedule: ScheduleSpec = "cubic", method: str = "magnitude",
                 allocation: str = "uniform", pattern: str = "unstructured", scope: Any = None,
                 initial_sparsity: float = 0.0, keep_masks: bool = False, **prune_options: Any) -> None:
        self.final_sparsity = check_sparsity(sparsity, "sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed sparsity ({sparsity})")
        check_window(start_step, end_step, every)
        self.schedule_fn = resolve_schedule(schedule)
        self.model = model
        self.start_step, self.end_step, self.every = start_step, end_step, every
        self.options = dict(method=method, allocation=allocation, pattern=pattern, scope=scope, **prune_options)
        self.options.setdefault("progress", False)
        # One plan, checked before any change (scope, pattern, allocation, criterion), applied at every step.
        plan = plan_prune(model, sparsity=self.final_sparsity, **self.options)
        if plan.pattern.fixed_sparsity is not None:
            raise ValueError(f"pattern {pattern} fixes the sparsity by itself; a gradual schedule needs an "
                             "unstructured, row or block pattern")
        self.plan = plan
        self.targets = plan.targets
        self.keep_masks = keep_masks
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.mask_history: list[dict[str, Tensor]] = []

    def target_at(self, step: int) -> float:
        """The schedule's sparsity at ``step``."""
        return sparsity_at(step, initial=self.initial_sparsity, final=self.final_sparsity,
                           start_step=self.start_step, end_step=self.end_step, schedule=self.schedule_fn)

    def due(self, step: int) -> bool:
        """Whether the masks are updated at ``step`` (on the ``every`` grid inside the window, and at its end)."""
        if step < self.start_step or step > self.end_step:
            return False
        return (step - self.start_step) % self.every == 0 or step == self.end_step

    @property
    def sparsity(self) -> float:
        """The sparsity of the tensors in scope now."""
        return targets_sparsity(self.targets)

    def step(self) -> float:
        """Advance one training step; prune if due. Returns the sparsity in scope after the step."""
        self.step_count += 1
        if self.due(self.step_count):
            self.prune_to_(self.target_at(self.step_count))
        return self.sparsity

    def prune_to_(self, target: float) -> None:
        """Prune now up to ``target`` sparsity (a no-op when the model is already that sparse)."""
        if target > self.sparsity + 1e-12:
            apply_plan_(self.model, self.plan, target)
        self.history.append({"step": self.step_count, "target": target, "sparsity": self.sparsity})
        if self.keep_masks:
            self.mask_history.append(current_masks(self.model))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the step count, the history and the current masks."""
        return {"step_count": self.step_count, "history": [dict(h) for h in self.history],
                "masks": current_masks(self.model), "mask_history": [dict(m) for m in self.mask_history],
                "final_sparsity": self.final_sparsity, "start_step": self.start_step, "end_step": self.end_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: restores the step count, the history and the masks on the model."""
        for key in ("final_sparsity", "start_step", "end_step"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"the saved schedule has {key}={state.get(key)}, this one {getattr(self, key)}; "
                                 "build the schedule with the same settings before loading")
        replace_masks_(self.model, state["masks"])
        self.step_count = int(state["step_count"])
        self.history = [dict(h) for h in state["history"]]
        self.mask_history = [dict(m) for m in state.get("mask_history", [])]


def gradual_for(model: nn.Module, total_steps: int | None, options: dict[str, Any], who: str) -> Gradual:
    """Build a :class:`Gradual` for a trainer's callback: ``end_step`` defaults to the trainer's
    ``total_steps``; a model without prunable tensors gets an error naming the callback."""
    opts = dict(options)
    if opts.get("end_step") is None:
        if not total_steps or total_steps < 1:
            raise ValueError(f"{who}: pass end_step= (the trainer does not know its number of steps)")
        opts["end_step"] = int(total_steps)
    opts.setdefault("every", max(1, (opts["end_step"] - opts.get("start_step", 0)) // 10))
    try:
        return Gradual(model, **opts)
    except ValueError as err:
        if "matches no prunable tensor" in str(err):
            raise ValueError(f"{who} is attached to a model with no prunable tensors ({type(model).__name__}); "
                             f"give it a scope= that names Linear/Conv layers, or prune another model. {err}") from err
        raise
