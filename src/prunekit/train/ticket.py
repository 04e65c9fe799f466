"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin, 2019; rewinding to an
early checkpoint as in Frankle et al., "Stabilizing the Lottery Ticket Hypothesis" / "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", 2019-2020).

Each round trains the model, prunes a fraction ``rate`` of the surviving weights by magnitude, and
rewinds the survivors to their values at the rewind point. ``train_fn(model, on_step)`` trains the
model in place and must call ``on_step(step)`` after every optimizer step (step counts from 1 — pass
it to :func:`prunekit.train.fit` as ``on_step=``); it may return a number or a dict of metrics, which
the round records. The weights are captured at the rewind step during the first round's training.
Rewinding to the initial weights (``rewind="init"``) needs no step callback, so there a plain
``train_fn(model)`` is accepted too.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..core.deprecation import deprecated_alias, renamed_args
from ..core.scope import targets_sparsity
from ..core.mask import get_mask, weight_of
from ..methods.prune import apply_plan_, plan_prune
from .schedule import check_sparsity
from .state import current_masks, load_plain_state_, plain_state, replace_masks_

TrainFn = Callable[[nn.Module, Callable[[int], None]], Any]
CONTROLS = (None, "reinit", "random_mask")


@dataclass
class Ticket:
    """The result of a ticket search: the masks, the rewind step, the control used and per-round metrics."""

    masks: dict[str, Tensor]
    rewind_step: int
    sparsity: float
    control: str | None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (masks as per-layer sparsities)."""
        return {"rewind_step": self.rewind_step, "sparsity": self.sparsity, "control": self.control,
                "rounds": [dict(r) for r in self.rounds],
                "layers": {n: float((~m).float().mean()) for n, m in self.masks.items()}}

    def __str__(self) -> str:
        last = self.rounds[-1] if self.rounds else {}
        metric = next((f", {k} {v:.4f}" for k, v in last.items() if k not in ("round", "train_steps", "sparsity")
                       and isinstance(v, float)), "")
        return (f"ticket: {len(self.rounds)} rounds, sparsity {self.sparsity:.4f}, rewound to step {self.rewind_step}"
                f"{', control ' + self.control if self.control else ''}{metric}")


def parse_rewind(rewind: str | int, steps: int | None) -> int:
    """The rewind step for ``"init"`` (0), ``"early:F"`` (a fraction F of ``steps``) or an integer step."""
    if rewind == "init":
        return 0
    if isinstance(rewind, int) and not isinstance(rewind, bool):
        step = rewind
    elif isinstance(rewind, str) and re.fullmatch(r"early:(\d*\.?\d+)", rewind):
        frac = float(rewind.split(":")[1])
        if not 0 <= frac < 1:
            raise ValueError(f"rewind fraction must be in [0, 1), got {rewind!r} (the paper uses 0.001-0.07)")
        if steps is None:
            raise ValueError(f"rewind={rewind!r} needs steps= (the optimizer steps one train_fn call takes)")
        step = round(frac * steps)
    else:
        raise ValueError(f"rewind must be 'init', 'early:F' (e.g. 'early:0.02') or a step number, got {rewind!r}")
    if step < 0:
        raise ValueError(f"rewind step must be >= 0, got {step}")
    if steps is not None and step > steps:
        raise ValueError(f"rewind step {step} is past the training length of {steps} steps; rewind earlier")
    return step


class TicketSearch:
    """Iterative magnitude pruning with rewinding, one round at a time, checkpointable between rounds.

    ``rounds`` train-prune-rewind cycles each remove ``rate`` of the surviving weights (or pass
    ``sparsity``, the final sparsity, to pick the rate that reaches it). ``control`` tests whether the ticket matters:
    ``"reinit"`` keeps the mask but re-initializes the weights (seeded), ``"random_mask"`` keeps the
    rewound weights under a random mask of the same per-layer sparsity.
    """

    @renamed_args(final_sparsity="sparsity")
    def __init__(self, model: nn.Module, train_fn: TrainFn, *, rounds: int = 5, rate: float = 0.2,
                 sparsity: float | None = None, rewind: str | int = "init", steps: int | None = None,
                 control: str | None = None, method: str = "magnitude", allocation: str = "global",
                 scope: Any = None, eval_fn: Callable[[nn.Module], float] | None = None, seed: int = 0,
                 keep_masks: bool = True) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        if sparsity is not None:
            rate = 1 - (1 - check_sparsity(sparsity, "sparsity")) ** (1 / rounds)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ValueError(f"rate must be in (0, 1), the fraction of surviving weights pruned per round; got {rate!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        self.rewind_step = parse_rewind(rewind, steps)
        train_fn = _adapt_train_fn(train_fn, needs_steps=self.rewind_step > 0)
        self.model, self.train_fn, self.eval_fn = model, train_fn, eval_fn
        self.rounds, self.rate, self.steps, self.control, self.seed = rounds, float(rate), steps, control, seed
        self.options = dict(method=method, allocation=allocation, scope=scope, progress=False)
        self.plan = plan_prune(model, sparsity=self.sparsity_after(rounds), **self.options)
        self.targets = self.plan.targets
        self.keep_masks = keep_masks
        self.round = 0
        self.metrics: list[dict[str, Any]] = []
        self.mask_history: list[dict[str, Tensor]] = []
        self.rewind_state: dict[str, Tensor] | None = plain_state(model) if self.rewind_step == 0 else None

    def sparsity_after(self, r: int) -> float:
        """Sparsity in scope after ``r`` rounds."""
        return 1 - (1 - self.rate) ** r

    def _on_step(self, step: int) -> None:
        self._seen = max(self._seen, step)
        if self.rewind_state is None and step == self.rewind_step:
            self.rewind_state = plain_state(self.model)

    def run_round(self) -> dict[str, Any]:
        """Train, prune ``rate`` of the survivors, rewind; returns the round's metrics."""
        if self.round >= self.rounds:
            raise ValueError(f"all {self.rounds} rounds are done; build a new search to go further")
        before = plain_state(self.model) if self.rewind_state is None else None
        self._seen = 0
        out = self.train_fn(self.model, self._on_step)
        if self.rewind_state is None:
            load_plain_state_(self.model, before)
            raise ValueError(
                f"train_fn never reached rewind step {self.rewind_step} (it reported {self._seen} steps): call "
                "on_step(step) after every optimizer step, or rewind earlier; the model was put back as it was"
            )
        row: dict[str, Any] = {"round": self.round + 1, "train_steps": self._seen}
        if isinstance(out, dict):
            row.update(out)
        elif isinstance(out, (int, float)):
            row["train_metric"] = float(out)
        if self.eval_fn is not None:
            row["eval_before_prune"] = float(self.eval_fn(self.model))
        self.round += 1
        apply_plan_(self.model, self.plan, self.sparsity_after(self.round))
        # Rewind weights and buffers (BatchNorm statistics too); the masks stay.
        load_plain_state_(self.model, self.rewind_state)
        row["sparsity"] = self._sparsity()
        self.metrics.append(row)
        if self.keep_masks:
            self.mask_history.append(current_masks(self.model))
        return row

    def _sparsity(self) -> float:
        return targets_sparsity(self.targets)

    def run(self) -> Ticket:
        """Run the remaining rounds, apply the control, and return the :class:`Ticket`."""
        while self.round < self.rounds:
            self.run_round()
        self._apply_control()
        return Ticket(current_masks(self.model), self.rewind_step, self._sparsity(), self.control,
                      [dict(m) for m in self.metrics])

    def _apply_control(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        if self.control == "reinit":
            for t in self.targets:
                _reinit_weight_(t.module, gen)
        elif self.control == "random_mask":
            masks = {}
            for t in self.targets:
                mask = get_mask(t.module)
                keep = int(mask.sum())
                order = torch.randperm(mask.numel(), generator=gen)[:keep]
                new = torch.zeros(mask.numel(), dtype=torch.bool)
                new[order] = True
                masks[t.name] = new.reshape(mask.shape)
            all_masks = current_masks(self.model)
            all_masks.update(masks)
            replace_masks_(self.model, all_masks)

    def state_dict(self) -> dict[str, Any]:
        """The search so far: rounds done, metrics, masks, current weights and the rewind weights."""
        return {"round": self.round, "rounds": self.rounds, "rate": self.rate, "rewind_step": self.rewind_step,
                "metrics": [dict(m) for m in self.metrics], "masks": current_masks(self.model),
                "weights": plain_state(self.model), "rewind_state": self.rewind_state,
                "mask_history": [dict(m) for m in self.mask_history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume a search saved by :meth:`state_dict` (the model gets the saved masks and weights)."""
        for key in ("rounds", "rate", "rewind_step"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved search has {key}={state[key]}, this one {getattr(self, key)}; "
                                 "build the search with the same settings before loading")
        replace_masks_(self.model, state["masks"])
        load_plain_state_(self.model, state["weights"])
        self.round = int(state["round"])
        self.metrics = [dict(m) for m in state["metrics"]]
        self.rewind_state = state["rewind_state"]
        self.mask_history = [dict(m) for m in state.get("mask_history", [])]


def _reinit_weight_(module: nn.Module, gen: torch.Generator) -> None:
    """Re-draw ``module``'s dense weight with PyTorch's default (Kaiming-uniform) initialization."""
    weight = weight_of(module)
    fresh = torch.empty_like(weight)
    fan_in = weight[0].numel()
    bound = 1 / fan_in ** 0.5  # kaiming_uniform_(a=sqrt(5)) as in nn.Linear / nn.ConvNd.reset_parameters
    with torch.no_grad():
        fresh.uniform_(-bound, bound, generator=gen)
        weight.copy_(fresh)


def _adapt_train_fn(train_fn: Any, needs_steps: bool) -> TrainFn:
    """``train_fn`` as ``train_fn(model, on_step)``: a one-argument ``train_fn(model)`` is wrapped when the
    rewind point needs no step callback; otherwise a clear error shows the expected signature."""
    expected = ("train_fn(model, on_step) that trains the model in place and calls on_step(step) after every "
                "optimizer step, e.g. lambda model, on_step: prunekit.train.fit(model, data, on_step=on_step)")
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable: {expected}")
    try:
        params = list(inspect.signature(train_fn).parameters.values())
    except (TypeError, ValueError):
        return train_fn  # a builtin or C function: trust it
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_two = any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 2
    if takes_two:
        return train_fn
    if len(positional) == 1:
        if needs_steps:
            raise TypeError(f"rewinding to a training step needs the step count, so train_fn must be a {expected}; "
                            f"{getattr(train_fn, '__name__', 'train_fn')} takes only the model (rewind='init' accepts that)")
        return lambda model, on_step: train_fn(model)
    raise TypeError(f"train_fn must be a {expected}; {getattr(train_fn, '__name__', 'train_fn')} takes no model")


def find_ticket_(model: nn.Module, train_fn: TrainFn, rounds: int = 5, rate: float = 0.2, *,
                rewind: str | int = "init", steps: int | None = None, control: str | None = None,
                **options: Any) -> Ticket:
    """Find a lottery ticket by iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
    Frankle et al. 2019 for rewinding to ``"early:F"``, a fraction of training, or a step number).

    ``train_fn(model, on_step)`` trains in place and calls ``on_step(step)`` after each optimizer step
    (with ``rewind="init"`` a plain ``train_fn(model)`` does too);
    ``steps`` is how many steps one call takes (needed for ``"early:F"``; checks a step number). Leaves
    the model holding the ticket (masked, survivors rewound, ready to train) and returns a
    :class:`Ticket`. ``rate`` is the fraction of the surviving weights pruned in each round; other
    options (``sparsity``, the final sparsity, ``method``, ``allocation``, ``scope``,
    ``eval_fn``, ``seed``) are those of :class:`TicketSearch`.
    """
    return TicketSearch(model, train_fn, rounds=rounds, rate=rate, rewind=rewind, steps=steps, control=control,
                        **options).run()


find_ticket = deprecated_alias(find_ticket_, "find_ticket")
