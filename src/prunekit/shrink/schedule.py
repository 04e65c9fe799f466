"""Adapt-Pruner's schedule (Pan et al., 2025, "Adapt-Pruner: Adaptive Structural Pruning for Efficient Small
Language Model Training"): prune a little, train, re-score, repeat — instead of one cut then one recovery.

``adapt_shrink_(model, teacher, "params=0.6", calibration, windows, AdaptConfig(rounds=4), kd)`` runs
``rounds`` rounds; round r cuts the model per layer (:func:`.search_layers.shrink_layers_`, scores and ranks
measured anew on the model as it is after the previous round's training) to ``1 − (1 − F)·r/rounds`` of the
*original* model's count, then trains it with ``kd`` (:func:`.distill.distill_`: logit distillation by
default, or any of its alternatives; its warm-up and cosine decay run within each round) for its share of
the steps. The steps of all rounds add up to
``kd.steps``, and the text continues from one round to the next, so the schedule reads exactly the tokens a
one-shot cut followed by ``kd.steps`` of training reads — the comparison is at the same budget. Every check
(target reachable from the original model, axes, calibration, training settings) runs before the first cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..core.config import Config
from .budget import non_embedding_params, parse_target
from .distill import DistillConfig, DistillReport, WindowStream, window_iter, distill_
from .perlayer import layer_shapes_of
from .search_layers import DEFAULT_PER_LAYER_AXES, LayerShrinkReport, check_layers, shrink_layers_
from .width import param_count


class AdaptConfig(Config):
    """Settings of the iterative schedule (see :func:`adapt_shrink_`)."""

    schedule: str = "adapt"
    rounds: int = Field(4, ge=1)
    axes: tuple[str, ...] = DEFAULT_PER_LAYER_AXES
    optimizer: str = "milp"
    score_windows: int = Field(4, ge=1)
    score_tokens: int | None = Field(None, ge=2)
    width_multiple: int | None = Field(None, ge=1)  # None: the searches' default (see shrink.search)


@dataclass
class AdaptReport:
    """Every round's cut and training, and the whole run's shapes and counts (first round's before, last
    round's after)."""

    target: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    non_embedding_before: int = 0
    non_embedding_after: int = 0
    params_before: int = 0
    params_after: int = 0

    @property
    def tokens(self) -> int:
        """Training tokens over all rounds."""
        return sum(r["distill"]["tokens"] for r in self.rounds)

    @property
    def non_embedding_kept(self) -> float:
        """Share of the original model's non-embedding parameters kept after the last round."""
        return self.non_embedding_after / self.non_embedding_before if self.non_embedding_before else 1.0

    @property
    def params_kept(self) -> float:
        """Share of the original model's parameters kept after the last round."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def distill(self) -> dict[str, Any]:
        """The rounds' training as one run, in :class:`.distill.DistillReport`'s keys: steps, tokens, wall and CPU
        seconds summed, peak memory the largest, losses from the first round's start and the last round's end."""
        runs = [r["distill"] for r in self.rounds]
        seconds = sum(d["seconds"] for d in runs)
        tokens = sum(d["tokens"] for d in runs)
        return {"steps": sum(d["steps"] for d in runs), "tokens": tokens, "seconds": seconds,
                "cpu_seconds": sum(d["cpu_seconds"] for d in runs),
                "peak_rss_bytes": max((d["peak_rss_bytes"] for d in runs), default=0),
                "lr": runs[0]["lr"] if runs else None, "temperature": runs[0]["temperature"] if runs else None,
                "resumed_from": 0, "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
                "loss_first": runs[0].get("loss_first") if runs else None,
                "loss_last": runs[-1].get("loss_last") if runs else None, "rounds": len(runs)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"search": "per-layer", "schedule": "adapt", "target": self.target, "rounds": self.rounds,
                "tokens": self.tokens, "seconds": self.seconds, "before": self.before, "after": self.after,
                "non_embedding_before": self.non_embedding_before, "non_embedding_after": self.non_embedding_after,
                "non_embedding_kept": self.non_embedding_kept, "params_before": self.params_before,
                "params_after": self.params_after, "params_kept": self.params_kept}

    def __str__(self) -> str:
        parts = [f"round {i + 1}: {r['target']}, non-embedding kept {r['shrink']['non_embedding_kept']:.1%}, "
                 f"{r['distill']['tokens']:,} tokens" for i, r in enumerate(self.rounds)]
        whole = ""
        if self.non_embedding_before:
            whole = (f"; non-embedding parameters {self.non_embedding_before:,} → {self.non_embedding_after:,} "
                     f"({self.non_embedding_kept:.1%}), all parameters {self.params_before:,} → "
                     f"{self.params_after:,} ({self.params_kept:.1%})")
        return f"Adapt-Pruner schedule to {self.target} in {len(self.rounds)} rounds ({'; '.join(parts)}){whole}"


def round_targets(fraction: float, rounds: int) -> list[float]:
    """The share of the original count kept after each round: 1 − (1 − F)·r/rounds, the last exactly F."""
    return [fraction if r == rounds else 1 - (1 - fraction) * r / rounds for r in range(1, rounds + 1)]


def round_steps(steps: int, rounds: int) -> list[int]:
    """Training steps per round: ``steps`` split as evenly as possible (earlier rounds get the remainder)."""
    if steps < rounds:
        raise ValueError(f"{steps} training steps cannot be split over {rounds} rounds; give at least one per round")
    return [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]


def adapt_shrink_(model: nn.Module, teacher: nn.Module | None, target: str, calibration: Any, windows: Any,
                  config: AdaptConfig | dict | None = None, kd: DistillConfig | dict | None = None, *,
                  progress: bool = False) -> AdaptReport:
    """Cut ``model`` in place to ``target`` (``params=`` or ``memory=``) in rounds of cut-then-train (see the module
    docstring); ``windows``: the training text (a :func:`.distill.text_stream` or token ids), read on across
    rounds. Returns an :class:`AdaptReport`."""
    cfg = config if isinstance(config, AdaptConfig) else AdaptConfig.parse(config or {})
    train = kd if isinstance(kd, DistillConfig) else DistillConfig.parse(kd or {})
    t = parse_target(target)
    if t.kind == "speed":
        raise ValueError("the Adapt-Pruner schedule cuts to params= or memory= (a count fixed against the original "
                         "model); speed= is measured on the model as it is")
    ne_dense = non_embedding_params(model)
    reference = ne_dense if t.kind == "params" else param_count(model)
    check_layers(model, t, cfg.axes, optimizer=cfg.optimizer, width_multiple=cfg.width_multiple)  # reachable from the original model, in one go
    steps = round_steps(train.steps, cfg.rounds)
    if train.needs_teacher and teacher is None:
        raise ValueError("the training reads a teacher (objective 'kd' or hidden_weight > 0); pass the unpruned model")
    from .api import check_calibration

    check_calibration(model, calibration)
    if isinstance(windows, WindowStream) and windows.seqlen != train.seqlen:
        raise ValueError(f"the stream cuts {windows.seqlen}-token windows but seqlen is {train.seqlen}")
    score_on = calibration[:cfg.score_windows]
    if cfg.score_tokens is not None:
        if not isinstance(score_on, torch.Tensor):
            raise ValueError("score_tokens needs the calibration as one (n, seqlen) tensor of token ids")
        score_on = score_on[:, :cfg.score_tokens]
    stream = window_iter(windows, train)  # one iterator: each round reads on where the last one stopped
    start = time.perf_counter()
    report = AdaptReport(str(t), before=layer_shapes_of(model).to_dict(), non_embedding_before=ne_dense,
                         params_before=param_count(model))
    for r, (keep, n) in enumerate(zip(round_targets(t.fraction, cfg.rounds), steps)):
        cut: LayerShrinkReport = shrink_layers_(model, f"{t.kind}={keep:.6f}", calibration, cfg.axes,
                                                optimizer=cfg.optimizer, reference=reference,
                                                score_on=score_on, progress=progress,
                                                width_multiple=cfg.width_multiple)
        trained: DistillReport = distill_(model, teacher, stream, train.replace(steps=n), progress=progress)
        report.rounds.append({"target": f"{t.kind}={keep:.4f}",
                              "shrink": {**cut.to_dict(), "non_embedding_kept": non_embedding_params(model) / ne_dense},
                              "distill": trained.to_dict()})
    report.seconds = time.perf_counter() - start
    report.after = layer_shapes_of(model).to_dict()
    report.non_embedding_after, report.params_after = non_embedding_params(model), param_count(model)
    return report
