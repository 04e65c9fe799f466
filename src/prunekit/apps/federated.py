"""Pruning inside federated averaging, after "Distributed Pruning Towards Tiny Neural Networks in
Federated Learning" (FedTiny, Huang et al., 2023): simulated clients with non-IID label splits
(Dirichlet α), FedAvg, and a mask the *server* decides and tightens round by round (progressive
pruning), so clients train and send only the kept weights. Every payload is counted in bytes, dense
(the baseline) or sparse (bitmask plus kept values, :func:`prunekit.core.stats.sparse_nbytes`).

Clients run in this process (``runner="serial"``), in worker processes (``"processes"``) or as Ray
tasks (``"ray"``); each client's update is one pure function of (weights, masks, its data, seed),
so the three give the same model.

FedTiny's adaptive batch-norm selection (``select=``): before the first pruning round the server builds one
candidate mask per layer-wise allocation (global magnitude, uniform, ERK, LAMP, … at the final sparsity) from the
averaged weights and sends every candidate to every client; each client recomputes the batch-norm statistics of
each candidate on its own data (the masked model's running means and variances, from scratch) and returns its
loss on that data under them; the candidate with the lowest size-weighted loss sets the allocation every later
pruning round uses. Candidates are judged on the clients' data, not on the server's weights alone, which is
FedTiny's answer to the bias non-IID data puts into a server-side choice.

FedTiny's progressive pruning (``adjust=``): once the final sparsity is reached, the mask is adjusted one layer a
round, output layer first, by the clients' top-k gradients of that layer's pruned weights (grow) against the
averaged weights' magnitudes (drop), at an unchanged sparsity (:mod:`prunekit.apps.fedtiny`); the top-k uploads
are counted. The clients' functions and runners are in :mod:`prunekit.apps.federated_clients`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn
from torch.utils.data import TensorDataset

from ..core.allocate import ALLOCATIONS
from ..core.fraction import check_fraction
from ..methods import prune_
from ..metrics.accuracy import accuracy
from .federated_clients import (RUNNERS, Clients, client_bn_loss, client_topk_grads, client_update, effective_state,
                                load_effective_, masks_of, payload_nbytes, topk_nbytes)
from .fedtiny import adaptive_bn_select, adjust_plan, grow_prune_, masked_layers

__all__ = ["FedReport", "FedRound", "adaptive_bn_select", "client_bn_loss", "client_update", "dirichlet_split",
           "effective_state", "federated_prune_", "payload_nbytes", "progressive_schedule"]


def dirichlet_split(labels: Any, n_clients: int, alpha: float, seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """Split example indices over ``n_clients`` with per-class shares drawn from Dirichlet(``alpha``)
    (small α: each client sees few classes). Redraws until every client holds ``min_size`` examples;
    returns one sorted index array per client, together a partition of ``range(len(labels))``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if isinstance(n_clients, bool) or int(n_clients) != n_clients or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (the Dirichlet concentration) must be a positive number, got {alpha!r}")
    if n_clients * min_size > y.size:
        raise ValueError(f"{y.size} examples cannot give {n_clients} clients {min_size} each; "
                         "use fewer clients or a smaller min_size")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * idx.size).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gave every client {min_size} examples in 1000 draws; "
                     "raise alpha or lower min_size")


@dataclass
class FedRound:
    """One communication round: the sparsity in force, test accuracy after averaging, bytes moved."""

    round: int
    sparsity: float
    accuracy: float | None
    download_bytes: int
    upload_bytes: int
    cumulative_bytes: int


@dataclass
class FedReport:
    """What :func:`federated_prune_` did, round by round; ``dense_bytes`` is what the same rounds cost
    with dense payloads (FedAvg without pruning or without sparse encoding)."""

    rounds: list[FedRound] = field(default_factory=list)
    clients: int = 0
    final_sparsity: float = 0.0
    total_bytes: int = 0
    dense_bytes: int = 0
    runner: str = "serial"
    allocation: str = "global"
    selection: dict[str, Any] | None = None  # adaptive BN: each candidate's weighted local loss, the bytes it moved
    adjustments: list[dict[str, Any]] = field(default_factory=list)  # progressive pruning: round, layer, k moved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        acc = self.rounds[-1].accuracy if self.rounds else None
        acc_s = "n/a" if acc is None else f"{acc:.4f}"
        chosen = ""
        if self.selection:
            losses = ", ".join(f"{k} {v:.3f}" for k, v in self.selection["losses"].items())
            chosen = f"; allocation {self.allocation} chosen by adaptive BN (local losses {losses})"
        if self.adjustments:
            moved = sum(a["k"] for a in self.adjustments)
            chosen += f"; progressive pruning moved {moved} weights in {len(self.adjustments)} layer steps"
        return (f"federated: {len(self.rounds)} rounds, {self.clients} clients ({self.runner}), sparsity "
                f"{self.final_sparsity:.3f}, accuracy {acc_s}, {self.total_bytes / 1e6:.2f} MB moved "
                f"({self.total_bytes / max(self.dense_bytes, 1):.3f} of dense {self.dense_bytes / 1e6:.2f} MB)"
                + chosen)


def progressive_schedule(sparsity: float, rounds: int, prune_until: float = 0.5) -> list[float]:
    """Sparsity in force at each round: 0 in the first (dense warm-up), then a cubic ramp (Zhu & Gupta's
    schedule) reaching ``sparsity`` at round ``prune_until``·``rounds``, then constant."""
    if not 0 < prune_until <= 1:
        raise ValueError(f"prune_until (the share of rounds spent pruning) must be in (0, 1], got {prune_until}")
    last = max(1, round((rounds - 1) * prune_until))
    return [sparsity * (1 - (1 - min(r, last) / last) ** 3) for r in range(rounds)]


def _check(model: nn.Module, model_fn: Callable, clients: Sequence[TensorDataset], rounds: int, sparsity: float,
           runner: str, local_epochs: float, select: Sequence[str] | None, adjust: float) -> None:
    if not callable(model_fn):
        raise ValueError("model_fn must be a function returning a fresh model of the same architecture")
    if not clients:
        raise ValueError("clients is empty: pass one TensorDataset per client (see dirichlet_split)")
    for i, c in enumerate(clients):
        if not isinstance(c, TensorDataset) or len(c) == 0:
            raise ValueError(f"client {i} must be a non-empty TensorDataset of (inputs, labels)")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    check_fraction(sparsity, "sparsity")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if not local_epochs > 0:
        raise ValueError(f"local_epochs must be positive, got {local_epochs}")
    if isinstance(adjust, bool) or not isinstance(adjust, (int, float)) or not 0 <= adjust <= 1:
        raise ValueError(f"adjust (the share of a layer's kept weights progressive pruning moves) must be in [0, 1], "
                         f"got {adjust!r}")
    if adjust > 0 and not sparsity > 0:
        raise ValueError("adjust moves pruned weights: it needs sparsity > 0")
    if select is not None:
        names = [select] if isinstance(select, str) else list(select)
        unknown = [n for n in names if n not in ALLOCATIONS]
        if unknown:
            raise ValueError(f"select: unknown allocation(s) {', '.join(map(repr, unknown))}; registered: "
                             f"{', '.join(ALLOCATIONS.names())}")
        if len(set(names)) < 2 or len(set(names)) != len(names):
            raise ValueError(f"select needs two or more distinct allocations to choose among, got {names}")
        if not sparsity > 0:
            raise ValueError("select chooses how the pruning is allocated: it needs sparsity > 0")
        for name in names:  # an allocation that needs more than weights (calibration, costs) fails here, not mid-run
            try:
                prune_(copy.deepcopy(model), "magnitude", sparsity, allocation=name, progress=False)
            except Exception as exc:
                raise ValueError(f"select: allocation {name!r} cannot prune this model by magnitude alone: "
                                 f"{exc}") from exc
    fresh = model_fn()
    if not isinstance(fresh, nn.Module) or set(effective_state(fresh)) != set(effective_state(model)):
        raise ValueError("model_fn() must build a model with the same parameters and buffers as model "
                         "(clients rebuild it from model_fn)")


def federated_prune_(model: nn.Module, model_fn: Callable[[], nn.Module], clients: Sequence[TensorDataset], *,
                     rounds: int = 10, sparsity: float = 0.0, prune_until: float = 0.5, local_epochs: float = 1.0,
                     lr: float = 0.05, batch_size: int = 32, sparse_payload: bool = True, runner: str = "serial",
                     select: Sequence[str] | None = None, adjust: float = 0.0, adjust_until: float = 0.8,
                     test: TensorDataset | None = None, seed: int = 0) -> FedReport:
    """Train ``model`` in place by FedAvg over ``clients`` (one TensorDataset each), the server
    pruning it by magnitude to the :func:`progressive_schedule` sparsity before each round's
    broadcast (global allocation, or the one ``select`` chose). Clients train under the server's masks; updates
    are averaged weighted by client size. ``select``: allocations (e.g. ``("global", "uniform", "erk", "lamp")``)
    among which FedTiny's adaptive batch-norm selection (:func:`adaptive_bn_select`, at the final sparsity, before
    the first pruning round) picks; its bytes are counted. ``adjust``: FedTiny's progressive pruning — from the
    first round at the final sparsity until ``adjust_until`` × rounds, one layer a round (output first) moves up to
    ``adjust`` (cosine-decayed) of its kept weights to the pruned ones the clients' top-k gradients favour
    (:func:`prunekit.apps.fedtiny.grow_prune_`); the top-k uploads are counted. ``sparse_payload=False`` counts
    every payload dense. ``test`` adds accuracy per round. Returns a :class:`FedReport`. ``model_fn`` must build
    ``model``'s architecture (clients rebuild it)."""
    _check(model, model_fn, clients, rounds, sparsity, runner, local_epochs, select, adjust)
    schedule = progressive_schedule(float(sparsity), int(rounds), prune_until)
    plan: dict[int, tuple[str, float]] = {}
    if adjust > 0:
        probe = copy.deepcopy(model)
        prune_(probe, "magnitude", float(sparsity), progress=False)
        plan = adjust_plan(schedule, masked_layers(probe), float(adjust), adjust_until)
        if not plan:
            raise ValueError(f"adjust: no round can adjust a layer ({rounds} rounds, final sparsity from round "
                             f"{next(r for r, s in enumerate(schedule) if s >= schedule[-1]) + 1}, adjust_until "
                             f"{adjust_until}): add rounds, lower prune_until or raise adjust_until")
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    weights = sizes / sizes.sum()
    report = FedReport(clients=len(clients), runner=runner)
    pool = Clients(runner, len(clients))
    try:
        total = 0
        for r, s in enumerate(schedule):
            if s > 0 and select is not None and report.selection is None:
                names = [select] if isinstance(select, str) else list(select)
                report.selection = adaptive_bn_select(model, model_fn, clients, float(sparsity), names, pool,
                                                      batch_size, sparse_payload)
                report.allocation = report.selection["chosen"]
                total += report.selection["download_bytes"] + report.selection["upload_bytes"]
                report.dense_bytes += report.selection["dense_bytes"]
            # once the final sparsity holds, progressive pruning owns the masks (a magnitude re-prune would drop
            # the weights it grew at zero before any client trained them)
            if s > 0 and not (plan and r > 0 and s == schedule[r - 1]):
                prune_(model, "magnitude", s, allocation=report.allocation, progress=False)
            state, masks = effective_state(model), masks_of(model)
            down = payload_nbytes(state, sparse_payload) * len(clients)
            up = 0
            topks = None
            if r in plan and plan[r][0] in masks:
                layer, share = plan[r]
                k = int(round(share * int(masks[layer].sum())))
                if k > 0:
                    topks = pool.map(client_topk_grads, [(model_fn, state, layer, masks[layer], c.tensors[0],
                                                          c.tensors[1], k, batch_size) for c in clients])
                    up += sum(topk_nbytes(len(idx)) for idx, _ in topks)
                    report.dense_bytes += masks[layer].numel() * 4 * len(clients)
            args = [(model_fn, state, masks, c.tensors[0], c.tensors[1], local_epochs, lr, batch_size,
                     seed * 100003 + r * 1009 + k) for k, c in enumerate(clients)]
            updates = pool.map(client_update, args)
            up += sum(payload_nbytes(u, sparse_payload) for u in updates)
            avg = {}
            for key in updates[0]:
                if updates[0][key].is_floating_point():
                    avg[key] = sum(float(w) * u[key] for w, u in zip(weights, updates))
                else:
                    avg[key] = updates[0][key]
            load_effective_(model, avg)
            if topks is not None:
                moved = grow_prune_(model, layer, topks, weights.tolist(), share)
                report.adjustments.append({"round": r + 1, "layer": layer, "k": moved["k"]})
            total += down + up
            report.dense_bytes += payload_nbytes(state, False) * len(clients) * 2
            acc = accuracy(model, test) if test is not None else None
            report.rounds.append(FedRound(r + 1, float(s), acc, down, up, total))
        report.total_bytes = total
        report.final_sparsity = float(schedule[-1])
    finally:
        pool.close()
    model.eval()
    return report
