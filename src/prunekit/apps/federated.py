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
FedTiny's answer to the bias non-IID data puts into a server-side choice. Its progressive fine-grained module is
not built: the server prunes by magnitude under the chosen allocation.
"""

from __future__ import annotations

import copy
import io
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from ..core.allocate import ALLOCATIONS
from ..core.fraction import check_fraction
from ..core.mask import get_mask, masked_modules, set_mask_, weight_of
from ..core.stats import sparse_nbytes
from ..methods import prune_
from ..metrics.accuracy import accuracy
from ..train.loop import fit

RUNNERS = ("serial", "processes", "ray")


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


def payload_nbytes(state: dict[str, Tensor], sparse: bool) -> int:
    """Bytes of a model payload: every tensor dense, or each floating tensor stored the smaller way
    (dense, or a bitmask plus its non-zero values)."""
    return sum(sparse_nbytes(t) if sparse else t.numel() * t.element_size() for t in state.values())


def effective_state(model: nn.Module) -> dict[str, Tensor]:
    """The state a client receives or sends: masked weights as they act (zeros in place), buffers included."""
    out: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        prefix = f"{name}." if name else ""
        for pname, p in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            out[prefix + pname] = p.detach().clone()
        if parametrize.is_parametrized(module, "weight"):
            out[prefix + "weight"] = module.weight.detach().clone()
    return out


def _masks(model: nn.Module) -> dict[str, Tensor]:
    return {name: get_mask(m).clone() for name, m in masked_modules(model)}  # type: ignore[union-attr]


def _load_effective_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Write an effective state into ``model`` (the dense tensors under any masks)."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        mod_name, _, pname = key.rpartition(".")
        module = modules[mod_name]
        target = weight_of(module, pname) if pname == "weight" else getattr(module, pname)
        with torch.no_grad():
            target.copy_(value)


def client_update(model_fn: Callable[[], nn.Module], state: dict[str, Tensor], masks: dict[str, Tensor],
                  x: Tensor, y: Tensor, epochs: float, lr: float, batch_size: int, seed: int) -> dict[str, Tensor]:
    """One client's round: build the model, load the server's weights and masks, train locally, return
    the effective weights (pruned entries stay zero). A pure function of its arguments."""
    torch.manual_seed(seed)
    model = model_fn()
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        set_mask_(modules[name], mask)
    _load_effective_(model, state)
    fit(model, TensorDataset(x, y), epochs=epochs, lr=lr, batch_size=min(batch_size, len(y)), seed=seed,
        progress=False)
    return effective_state(model)


def client_bn_loss(model_fn: Callable[[], nn.Module], state: dict[str, Tensor], masks: dict[str, Tensor],
                   x: Tensor, y: Tensor, batch_size: int) -> tuple[float, int]:
    """FedTiny's adaptive batch-norm evaluation of one candidate on one client: build the model, load the candidate's
    weights and masks, recompute every batch norm's running statistics from scratch on the local data (a cumulative
    average over its batches, no gradient), then return the summed cross-entropy over the local data under those
    statistics, and the example count. A pure function of its arguments."""
    model = model_fn()
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        set_mask_(modules[name], mask)
    _load_effective_(model, state)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # the cumulative average of every batch seen
    bs = max(1, min(batch_size, len(y)))
    with torch.no_grad():
        if norms:
            model.train()
            for i in range(0, len(y), bs):
                model(x[i:i + bs])
        model.eval()
        loss = sum(float(nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs], reduction="sum"))
                   for i in range(0, len(y), bs))
    return loss, len(y)


def _pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _in_process(job: bytes) -> bytes:
    """Run one packed ``(fn, args)`` job in a worker. Jobs and results cross as bytes: tensors pickled by
    multiprocessing would travel as shared-memory file descriptors, whose hand-over can hang a spawned pool."""
    torch.set_num_threads(1)
    fn, args = torch.load(io.BytesIO(job), weights_only=False)
    return _pack(fn(*args))


class _Clients:
    """Runs one pure function per client: in this process, in worker processes, or as Ray tasks."""

    def __init__(self, runner: str, n: int) -> None:
        self.runner, self.pool, self.remote = runner, None, None
        if runner == "processes":
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(min(n, 2))
        elif runner == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            self.remote = ray.remote(num_cpus=1)(_in_process)

    def map(self, fn: Callable, args: list[tuple]) -> list[Any]:
        if self.runner == "serial":
            return [fn(*a) for a in args]
        jobs = [_pack((fn, a)) for a in args]
        if self.runner == "processes":
            out = self.pool.map(_in_process, jobs)  # type: ignore[union-attr]
        else:
            import ray

            out = ray.get([self.remote.remote(j) for j in jobs])  # type: ignore[union-attr]
        return [torch.load(io.BytesIO(b), weights_only=False) for b in out]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        acc = self.rounds[-1].accuracy if self.rounds else None
        acc_s = "n/a" if acc is None else f"{acc:.4f}"
        chosen = ""
        if self.selection:
            losses = ", ".join(f"{k} {v:.3f}" for k, v in self.selection["losses"].items())
            chosen = f"; allocation {self.allocation} chosen by adaptive BN (local losses {losses})"
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
           runner: str, local_epochs: float, select: Sequence[str] | None) -> None:
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


def adaptive_bn_select(model: nn.Module, model_fn: Callable[[], nn.Module], clients: Sequence[TensorDataset],
                       sparsity: float, candidates: Sequence[str], runner: "_Clients", batch_size: int,
                       sparse_payload: bool = True) -> dict[str, Any]:
    """FedTiny's adaptive batch-norm selection: one candidate mask per allocation in ``candidates`` at ``sparsity``
    (magnitude on ``model``'s current weights), each evaluated by every client (:func:`client_bn_loss`); returns
    ``{"chosen", "losses" (size-weighted mean local loss per candidate), "download_bytes", "upload_bytes",
    "dense_bytes"}``. ``model`` is not changed."""
    losses: dict[str, float] = {}
    down = up = dense = 0
    n = sum(len(c) for c in clients)
    for name in candidates:
        candidate = copy.deepcopy(model)
        prune_(candidate, "magnitude", sparsity, allocation=name, progress=False)
        state, masks = effective_state(candidate), _masks(candidate)
        down += payload_nbytes(state, sparse_payload) * len(clients)
        dense += payload_nbytes(state, False) * len(clients)
        results = runner.map(client_bn_loss, [(model_fn, state, masks, c.tensors[0], c.tensors[1], batch_size)
                                              for c in clients])
        up += 16 * len(clients)  # a float64 loss and an int64 count from each client
        losses[name] = sum(loss for loss, _ in results) / n
    dense += up
    return {"chosen": min(losses, key=losses.get), "losses": losses, "download_bytes": down, "upload_bytes": up,
            "dense_bytes": dense}


def federated_prune_(model: nn.Module, model_fn: Callable[[], nn.Module], clients: Sequence[TensorDataset], *,
                     rounds: int = 10, sparsity: float = 0.0, prune_until: float = 0.5, local_epochs: float = 1.0,
                     lr: float = 0.05, batch_size: int = 32, sparse_payload: bool = True, runner: str = "serial",
                     select: Sequence[str] | None = None, test: TensorDataset | None = None,
                     seed: int = 0) -> FedReport:
    """Train ``model`` in place by FedAvg over ``clients`` (one TensorDataset each), the server
    pruning it by magnitude to the :func:`progressive_schedule` sparsity before each round's
    broadcast (global allocation, or the one ``select`` chose). Clients train under the server's masks; updates
    are averaged weighted by client size. ``select``: allocations (e.g. ``("global", "uniform", "erk", "lamp")``)
    among which FedTiny's adaptive batch-norm selection (:func:`adaptive_bn_select`, at the final sparsity, before
    the first pruning round) picks; its bytes are counted. ``sparse_payload=False`` counts every payload dense.
    ``test`` adds accuracy per round. Returns a :class:`FedReport`. ``model_fn`` must build ``model``'s
    architecture (clients rebuild it)."""
    _check(model, model_fn, clients, rounds, sparsity, runner, local_epochs, select)
    schedule = progressive_schedule(float(sparsity), int(rounds), prune_until)
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    weights = sizes / sizes.sum()
    report = FedReport(clients=len(clients), runner=runner)
    pool = _Clients(runner, len(clients))
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
            if s > 0:
                prune_(model, "magnitude", s, allocation=report.allocation, progress=False)
            state, masks = effective_state(model), _masks(model)
            down = payload_nbytes(state, sparse_payload) * len(clients)
            args = [(model_fn, state, masks, c.tensors[0], c.tensors[1], local_epochs, lr, batch_size,
                     seed * 100003 + r * 1009 + k) for k, c in enumerate(clients)]
            updates = pool.map(client_update, args)
            up = sum(payload_nbytes(u, sparse_payload) for u in updates)
            avg = {}
            for key in updates[0]:
                if updates[0][key].is_floating_point():
                    avg[key] = sum(float(w) * u[key] for w, u in zip(weights, updates))
                else:
                    avg[key] = updates[0][key]
            _load_effective_(model, avg)
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
