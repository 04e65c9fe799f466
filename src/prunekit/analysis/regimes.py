"""The three-regime model of network pruning (Zhou, Yang, Chang & Mahoney, ICML 2023): measurements and taxonomy.

The paper trains a dense network at a *temperature-like* setting (training epochs before early stopping, batch size,
SAM's ρ: the noise left in the solution), prunes it to a *load-like* setting (the pruned model's density), retrains
the pruned network from the same mask with different seeds, and reads the global structure of the pruned loss
landscape from two of those retrained solutions:

- **connectivity**: the loss along the path between them (:func:`linear_path`: the loss barrier, the largest rise
  above the straight line between the end losses, and Yang et al.'s mode connectivity ``mc = ½(L₀ + L₁) − L(α*)``);
- **similarity**: linear CKA between their outputs on the same inputs (:func:`linear_cka`).

Regimes (:func:`classify`): **I** a barrier (poorly connected); **II-A** connected, outputs dissimilar; **II-B**
connected, outputs similar. The paper's prediction (:func:`predicted_direction`): in regime I raising the temperature
improves the pruned model; in regime II lowering it does (raising it hurts). The paper measures the path on a Bezier
curve fitted between the two solutions; here the straight line (linear mode connectivity), which needs no training.
:func:`sharpness` adds the local view: how much the loss rises under random weight perturbations of a fixed
relative size (a flat or sharp dense solution).

Nothing here knows a pruning method: the callers train, prune and retrain (see ``benchmarks/papers_regimes.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core.config import Config
from ..infra.calling import call_model

Evaluate = Callable[[nn.Module], float]
REGIMES = ("I", "II-A", "II-B")


class RegimeConfig(Config):
    """How a grid point is measured and classified. ``barrier_threshold``: a path whose barrier exceeds it is
    poorly connected (regime I), in the units ``evaluate`` returns (a loss); ``cka_threshold``: connected points
    whose CKA reaches it are regime II-B."""

    points: int = Field(11, ge=3)
    barrier_threshold: float = Field(0.05, ge=0)
    cka_threshold: float = Field(0.9, ge=0, le=1)


@dataclass
class PathReport:
    """The loss at evenly spaced points of the straight path between two solutions, and what it says."""

    alphas: list[float]
    losses: list[float]
    barrier: float
    mode_connectivity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"linear path over {len(self.alphas)} points: ends {self.losses[0]:.4g} / {self.losses[-1]:.4g}, "
                f"barrier {self.barrier:.4g}, mode connectivity {self.mode_connectivity:.4g}")


def _float_state(a: nn.Module, b: nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        only = sorted(set(sa) ^ set(sb))[:3]
        raise ValueError(f"the two models hold different tensors ({', '.join(only)} …): interpolate two networks of "
                         "one architecture, with masks made permanent in both or in neither (prunekit.core.mask.finalize_)")
    bad = [k for k in sa if sa[k].shape != sb[k].shape]
    if bad:
        raise ValueError(f"{bad[0]} has shape {tuple(sa[bad[0]].shape)} in one model and {tuple(sb[bad[0]].shape)} in "
                         "the other: the two networks must have one shape")
    return [k for k in sa if sa[k].is_floating_point()]


def recompute_bn_(model: nn.Module, batches: Iterable[Any]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) from ``batches`` of
    inputs or (inputs, targets) — an interpolated network's statistics are not those of its ends. Returns how
    many BatchNorm layers were reset (0: nothing to do, the batches are not read)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was)
    if not seen:
        raise ValueError("bn_data held no batch: pass the batches the BatchNorm statistics are re-estimated on")
    return len(norms)


def linear_path(a: nn.Module, b: nn.Module, evaluate: Evaluate, points: int = 11,
                bn_data: Iterable[Any] | None = None) -> PathReport:
    """``evaluate`` at ``points`` evenly spaced points θ(α) = (1 − α)·θ_a + α·θ_b, α from 0 to 1 (every floating
    tensor of the state, BatchNorm statistics re-estimated on ``bn_data`` when given). The barrier is
    max_α [L(α) − ((1 − α)·L(0) + α·L(1))] (≥ 0; 0 when the path never rises above the line between its ends);
    the mode connectivity is ((1 − α*)·L(0) + α*·L(1)) − L(α*) at the interior α* where that difference is largest
    in size (Yang et al.'s ½(L(0) + L(1)) − L(α*) for equal ends; < 0: a barrier, > 0: a valley). ``evaluate``
    runs without gradients. Neither model changes."""
    if not isinstance(points, int) or points < 3:
        raise ValueError(f"points must be a whole number ≥ 3 (the two ends and at least one between), got {points!r}")
    keys = _float_state(a, b)
    bn_batches = list(bn_data) if bn_data is not None else None
    sa, sb = a.state_dict(), b.state_dict()
    work = copy.deepcopy(a)
    alphas = [i / (points - 1) for i in range(points)]
    losses = []
    for alpha in alphas:
        with torch.no_grad():
            state = {k: (torch.lerp(sa[k].double(), sb[k].double(), alpha).to(sa[k].dtype) if k in keys else sa[k])
                     for k in sa}
            work.load_state_dict(state)
        if bn_batches is not None:
            recompute_bn_(work, bn_batches)
        work.eval()
        with torch.no_grad():
            losses.append(float(evaluate(work)))
    if not all(math.isfinite(v) for v in losses):
        raise ValueError(f"evaluate returned a non-finite value on the path ({losses}): check the models and data")
    l0, l1 = losses[0], losses[-1]
    excess = [v - ((1 - t) * l0 + t * l1) for t, v in zip(alphas, losses)]
    barrier = max(0.0, max(excess))
    mc = -max(excess[1:-1], key=abs)
    return PathReport(alphas, losses, barrier, mc)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same n examples (rows): ‖Yᶜᵀ Xᶜ‖²_F /
    (‖Xᶜᵀ Xᶜ‖_F · ‖Yᶜᵀ Yᶜ‖_F) with columns centred, in float64. 1 for representations equal up to rotation and
    scale; 0 for orthogonal ones."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka needs two (n, features) matrices over the same n ≥ 2 examples; got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    num = (yc.T @ xc).square().sum()
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if den == 0:
        raise ValueError("a representation is constant over the examples: CKA is undefined")
    return float(num / den)


def sharpness(model: nn.Module, evaluate: Evaluate, radius: float = 0.05, samples: int = 5, seed: int = 0) -> float:
    """How much ``evaluate`` rises, on average over ``samples`` draws, when every weight matrix and kernel
    (parameters of 2 or more dimensions) is moved by Gaussian noise of norm ``radius``·‖W‖ (a filter-size-aware
    random perturbation: large for a sharp solution, near 0 for a flat one). The weights are put back."""
    if not radius > 0 or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"radius must be > 0 and samples a whole number ≥ 1; got radius={radius!r}, samples={samples!r}")
    params = [p for p in model.parameters() if p.ndim >= 2]
    if not params:
        raise ValueError("the model has no weight matrix or kernel to perturb")
    gen = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in params]
    was = model.training
    model.eval()
    rises = []
    try:
        with torch.no_grad():
            base = float(evaluate(model))
            for _ in range(samples):
                for p, w in zip(params, saved):
                    noise = torch.randn(w.shape, generator=gen, dtype=w.dtype)
                    p.copy_(w + noise * (radius * w.norm() / noise.norm().clamp_min(1e-12)))
                rises.append(float(evaluate(model)) - base)
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        model.train(was)
    return sum(rises) / len(rises)


def classify(barrier: float, cka: float, config: RegimeConfig | None = None) -> Literal["I", "II-A", "II-B"]:
    """The regime of a grid point: I when the barrier exceeds ``barrier_threshold``; else II-B when the CKA
    reaches ``cka_threshold``, II-A when it does not."""
    cfg = config or RegimeConfig()
    if barrier > cfg.barrier_threshold:
        return "I"
    return "II-B" if cka >= cfg.cka_threshold else "II-A"


def predicted_direction(regime: str) -> int:
    """The paper's advice for a point in ``regime``: +1 raise the temperature (regime I, toward II-A), −1 lower it
    (regime II-A toward II-B; in II-B raising it moves back toward II-A)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    return 1 if regime == "I" else -1


@dataclass
class Transition:
    """One step up in temperature at a fixed load: the regime at the lower temperature, and what raising it did."""

    load: float
    temperature: float
    next_temperature: float
    barrier: float
    cka: float
    gain: float  # pruned accuracy at next_temperature − at temperature


def prediction_accuracy(transitions: Sequence[Transition], config: RegimeConfig) -> tuple[float, int]:
    """The fraction of ``transitions`` whose gain has the sign the regime predicts (ties, gain 0, count as
    misses), and how many were judged."""
    if not transitions:
        raise ValueError("no transitions to judge: the grid needs two temperatures at one load")
    hits = sum(1 for t in transitions if predicted_direction(classify(t.barrier, t.cka, config)) * t.gain > 0)
    return hits / len(transitions), len(transitions)


def fit_barrier_threshold(transitions: Sequence[Transition], config: RegimeConfig | None = None) -> RegimeConfig:
    """The barrier threshold (among 0 and the midpoints between the measured barriers) that makes the most
    predictions right on ``transitions`` (the smallest such threshold on a tie); the config with it."""
    cfg = config or RegimeConfig()
    if not transitions:
        raise ValueError("no transitions to fit on")
    values = sorted({t.barrier for t in transitions})
    candidates = [0.0] + [(u + v) / 2 for u, v in zip(values, values[1:])] + [values[-1] + 1.0]
    best = max(candidates, key=lambda c: (prediction_accuracy(transitions, cfg.replace(barrier_threshold=c))[0], -c))
    return cfg.replace(barrier_threshold=best)


def against_fixed_guess(transitions: Sequence[Transition], config: RegimeConfig, guess: int) -> tuple[int, int, float]:
    """The regime rule against always predicting ``guess`` (+1 raise the temperature, −1 lower it), judged on the
    steps where the two disagree (an exact sign test, as McNemar's for paired predictions): how many of those the
    rule got right, how many the guess got right (a step with no change counts for neither), and the one-sided
    p-value that the rule is no better, P(X ≥ rule's | n = both counts, ½). With no disagreement, p = 1."""
    if guess not in (1, -1):
        raise ValueError(f"guess must be +1 (raise) or -1 (lower), got {guess!r}")
    rule = guessed = 0
    for t in transitions:
        direction = predicted_direction(classify(t.barrier, t.cka, config))
        if direction != guess and t.gain != 0:
            rule += direction * t.gain > 0
            guessed += guess * t.gain > 0
    n = rule + guessed
    p = sum(math.comb(n, k) for k in range(rule, n + 1)) / 2 ** n if n else 1.0
    return rule, guessed, p
