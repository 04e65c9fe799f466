"""Sparse training from scratch: static random masks with ERK densities, and prune-and-regrow.

- :func:`sparse_init_`: random masks whose per-layer densities follow Erdős–Rényi-kernel
  (Mocanu et al. 2018; Evci et al. 2020) or any registered allocation.
- :class:`DynamicSparse`: every ``update_every`` steps drop the smallest-magnitude active weights of
  each layer and regrow as many inactive ones — at random (SET, Mocanu et al. 2018) or by the largest
  dense-gradient magnitude (RigL, Evci et al. 2020). With ``initial_sparsity`` below ``sparsity``, the
  sparsity follows a gradual schedule meanwhile (GraNet: gradual pruning with zero-cost
  neuroregeneration, Liu et al. 2021). :func:`SET`, :func:`RigL` and :func:`GraNet` build them.

Regrown connections start at zero; the dense weights under a mask are kept at zero where pruned.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..infra.calling import call_model, output_tensor
from ..core.deprecation import renamed_args
from ..core.scope import targets_sparsity
from ..core.mask import get_mask, weight_of
from ..criteria.base import eval_mode
from ..methods.prune import PruneReport, apply_plan_, plan_prune, prune_
from .schedule import ScheduleSpec, check_sparsity, check_window, resolve_schedule, sparsity_at
from .state import current_masks, replace_masks_, zero_pruned_


@renamed_args(distribution="allocation")
def sparse_init_(model: nn.Module, sparsity: float, *, allocation: str = "erk", scope: Any = None,
                 seed: int = 0) -> PruneReport:
    """Put static random masks on ``model`` with per-layer densities from ``allocation`` (``"erk"``
    by default, or ``"uniform"``), as sparse training from scratch does; the pruned weights are zeroed."""
    report = prune_(model, "random", sparsity, allocation=allocation, scope=scope, seed=seed, progress=False)
    zero_pruned_(model)
    return report


class DynamicSparse:
    """Prune-and-regrow sparse training (SET, RigL, GraNet); call :meth:`step` after each optimizer step.

    ``regrow``: ``"random"`` (SET) or ``"gradient"`` (RigL/GraNet, needs ``data``: an iterable of
    ``(inputs, targets)`` batches, cycled, and ``loss_fn``). ``drop_fraction`` of each layer's active
    weights is swapped at every update, decaying on a cosine to 0 at ``end_step``. A model with no masks
    in scope is first given random masks at ``initial_sparsity``, spread by ``init_allocation`` (ERK). Pass the ``optimizer`` to have
    its state (momentum) cleared at regrown weights.
    """

    @renamed_args(distribution="init_allocation")
    def __init__(self, model: nn.Module, sparsity: float = 0.9, *, regrow: str = "random", update_every: int = 100,
                 end_step: int = 1000, drop_fraction: float = 0.3, initial_sparsity: float | None = None,
                 start_step: int = 0, schedule: ScheduleSpec = "cubic", init_allocation: str = "erk",
                 allocation: str = "global", scope: Any = None, data: Iterable[Any] | None = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                 optimizer: torch.optim.Optimizer | None = None, seed: int = 0) -> None:
        self.final_sparsity = check_sparsity(sparsity, "sparsity")
        self.initial_sparsity = self.final_sparsity if initial_sparsity is None else check_sparsity(
            initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed sparsity ({sparsity})")
        check_window(start_step, end_step, update_every)
        if regrow not in ("random", "gradient"):
            raise ValueError(f"regrow must be 'random' (SET) or 'gradient' (RigL, GraNet), got {regrow!r}")
        if regrow == "gradient" and data is None:
            raise ValueError("gradient regrowth needs data= (an iterable of (inputs, targets) batches) and loss_fn=")
        if not 0 <= drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
        self.schedule_fn = resolve_schedule(schedule)
        self.plan = plan_prune(model, "magnitude", self.final_sparsity, allocation=allocation, scope=scope,
                               progress=False)
        self.model, self.targets = model, self.plan.targets
        self.regrow, self.update_every, self.start_step, self.end_step = regrow, update_every, start_step, end_step
        self.drop_fraction, self.allocation, self.scope = drop_fraction, allocation, scope
        self.data, self.loss_fn, self.optimizer = data, loss_fn, optimizer
        self._batches = None
        self.gen = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        if all(get_mask(t.module) is None for t in self.targets) and self.initial_sparsity > 0:
            sparse_init_(model, self.initial_sparsity, allocation=init_allocation, scope=scope, seed=seed)
        zero_pruned_(model)

    @property
    def sparsity(self) -> float:
        """The sparsity of the tensors in scope now."""
        return targets_sparsity(self.targets)

    def drop_fraction_at(self, step: int) -> float:
        """The fraction of active weights swapped at ``step`` (cosine decay, as RigL)."""
        if step >= self.end_step:
            return 0.0
        return self.drop_fraction * (1 + math.cos(math.pi * step / self.end_step)) / 2

    def step(self, batch: Any = None) -> float:
        """Advance one step; update the masks when due (``batch`` overrides the data for the gradient)."""
        self.step_count += 1
        s = self.step_count
        if self.start_step <= s <= self.end_step and (s - self.start_step) % self.update_every == 0:
            self.update_(batch)
        return self.sparsity

    def update_(self, batch: Any = None) -> dict[str, float]:
        """Prune to the schedule's sparsity, then drop and regrow within each layer, now."""
        s = self.step_count
        target = sparsity_at(s, initial=self.initial_sparsity, final=self.final_sparsity,
                             start_step=self.start_step, end_step=self.end_step, schedule=self.schedule_fn)
        zero_pruned_(self.model)
        if target > self.sparsity + 1e-12:
            apply_plan_(self.model, self.plan, target)
        frac = self.drop_fraction_at(s)
        grads = self._dense_grads(batch) if self.regrow == "gradient" and frac > 0 else None
        swapped = 0
        for t in self.targets:
            mask = get_mask(t.module)
            if mask is None:
                continue
            swapped += self._swap_(t, mask, frac, None if grads is None else grads[t.name])
        zero_pruned_(self.model)
        row = {"step": s, "target": target, "sparsity": self.sparsity, "swapped": swapped}
        self.history.append(row)
        return row

    def _swap_(self, t, mask: Tensor, frac: float, grad: Tensor | None) -> int:
        flat = mask.reshape(-1)
        n_active = int(flat.sum())
        k = min(int(frac * n_active), int((~flat).sum()))
        if k <= 0:
            return 0
        weight = weight_of(t.module).detach().reshape(-1).abs()
        drop_scores = torch.where(flat, weight, torch.full_like(weight, math.inf))
        drop = torch.topk(drop_scores, k, largest=False).indices
        new = flat.clone()
        new[drop] = False
        if grad is None:
            grow_scores = torch.rand(flat.shape, generator=self.gen).to(weight.device)
        else:
            grow_scores = grad.detach().reshape(-1).abs().float().clone()
        candidates = ~flat  # inactive before the drop: a just-dropped weight is not regrown at once
        grow_scores = torch.where(candidates, grow_scores, torch.full_like(grow_scores, -math.inf))
        grow = torch.topk(grow_scores, k).indices
        new[grow] = True
        flat.copy_(new)
        with torch.no_grad():
            weight_of(t.module).reshape(-1)[grow] = 0.0
        self._clear_optimizer_state(weight_of(t.module), grow)
        return k

    def _clear_optimizer_state(self, param: Tensor, index: Tensor) -> None:
        if self.optimizer is None:
            return
        for value in self.optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.reshape(-1)[index] = 0

    def _next_batch(self) -> Any:
        if self._batches is None:
            self._batches = itertools.cycle(self.data)
        return next(self._batches)

    def _dense_grads(self, batch: Any) -> dict[str, Tensor]:
        """Gradient of the loss w.r.t. the dense weights (pruned entries included) on one batch."""
        batch = self._next_batch() if batch is None else batch
        inputs, labels = batch
        saved = {t.name: get_mask(t.module).clone() for t in self.targets if get_mask(t.module) is not None}
        params = [weight_of(t.module) for t in self.targets]
        try:
            for t in self.targets:  # pruned weights are zero, so opening the masks changes no output
                if t.name in saved:
                    get_mask(t.module).fill_(True)
            with eval_mode(self.model), torch.enable_grad():
                loss = self.loss_fn(output_tensor(call_model(self.model, inputs)), labels)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for t in self.targets:
                if t.name in saved:
                    get_mask(t.module).copy_(saved[t.name])
        return {t.name: torch.zeros_like(p) if g is None else g for t, p, g in zip(self.targets, params, grads)}

    def state_dict(self) -> dict[str, Any]:
        """The step count, the history, the masks and the random generator's state."""
        return {"step_count": self.step_count, "history": [dict(h) for h in self.history],
                "masks": current_masks(self.model), "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (the model gets the saved masks)."""
        replace_masks_(self.model, state["masks"])
        zero_pruned_(self.model)
        self.step_count = int(state["step_count"])
        self.history = [dict(h) for h in state["history"]]
        self.gen.set_state(state["generator"])


def SET(model: nn.Module, sparsity: float = 0.9, **options: Any) -> DynamicSparse:
    """Sparse Evolutionary Training (Mocanu et al. 2018): ERK random masks, magnitude drop, random regrowth."""
    return DynamicSparse(model, sparsity, regrow="random", **options)


def RigL(model: nn.Module, sparsity: float = 0.9, *, data: Iterable[Any], **options: Any) -> DynamicSparse:
    """Rigging the Lottery (Evci et al. 2020): ERK random masks, magnitude drop, dense-gradient regrowth."""
    return DynamicSparse(model, sparsity, regrow="gradient", data=data, **options)


def GraNet(model: nn.Module, sparsity: float = 0.9, *, data: Iterable[Any], initial_sparsity: float = 0.0,
           **options: Any) -> DynamicSparse:
    """GraNet (Liu et al. 2021): gradual magnitude pruning from ``initial_sparsity`` (0: dense-to-sparse;
    e.g. 0.5: sparse-to-sparse) to ``sparsity`` on a cubic schedule, with gradient regrowth at every update."""
    return DynamicSparse(model, sparsity, regrow="gradient", data=data, initial_sparsity=initial_sparsity, **options)
