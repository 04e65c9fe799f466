"""What each federated client runs, and how the clients are run: pure functions of (weights, masks, local data,
seed) — a local training round, FedTiny's batch-norm evaluation of a candidate mask, the top-k gradients of one
layer's pruned weights — and :class:`Clients`, which maps one of them over the clients in this process, in worker
processes or as Ray tasks (the same results). Payload sizes are counted here (:func:`payload_nbytes`)."""

from __future__ import annotations

import io
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from ..core.mask import get_mask, masked_modules, set_mask_, weight_of
from ..core.stats import sparse_nbytes
from ..train.loop import fit

RUNNERS = ("serial", "processes", "ray")


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


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every mask of ``model``, by module name."""
    return {name: get_mask(m).clone() for name, m in masked_modules(model)}  # type: ignore[union-attr]


def load_effective_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Write an effective state into ``model`` (the dense tensors under any masks)."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        mod_name, _, pname = key.rpartition(".")
        module = modules[mod_name]
        target = weight_of(module, pname) if pname == "weight" else getattr(module, pname)
        with torch.no_grad():
            target.copy_(value)


def client_model(model_fn: Callable[[], nn.Module], state: dict[str, Tensor],
                 masks: dict[str, Tensor] | None = None) -> nn.Module:
    """What every client starts from: a fresh model from ``model_fn`` with the server's ``masks`` (by module name)
    and its effective weights ``state``."""
    model = model_fn()
    modules = dict(model.named_modules())
    for name, mask in (masks or {}).items():
        set_mask_(modules[name], mask)
    load_effective_(model, state)
    return model


def client_update(model_fn: Callable[[], nn.Module], state: dict[str, Tensor], masks: dict[str, Tensor],
                  x: Tensor, y: Tensor, epochs: float, lr: float, batch_size: int, seed: int) -> dict[str, Tensor]:
    """One client's round: build the model, load the server's weights and masks, train locally, return
    the effective weights (pruned entries stay zero). A pure function of its arguments."""
    torch.manual_seed(seed)
    model = client_model(model_fn, state, masks)
    fit(model, TensorDataset(x, y), epochs=epochs, lr=lr, batch_size=min(batch_size, len(y)), seed=seed,
        progress=False)
    return effective_state(model)


def client_bn_loss(model_fn: Callable[[], nn.Module], state: dict[str, Tensor], masks: dict[str, Tensor],
                   x: Tensor, y: Tensor, batch_size: int) -> tuple[float, int]:
    """FedTiny's adaptive batch-norm evaluation of one candidate on one client: build the model, load the candidate's
    weights and masks, recompute every batch norm's running statistics from scratch on the local data (a cumulative
    average over its batches, no gradient), then return the summed cross-entropy over the local data under those
    statistics, and the example count. A pure function of its arguments."""
    model = client_model(model_fn, state, masks)
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


def client_topk_grads(model_fn: Callable[[], nn.Module], state: dict[str, Tensor], layer: str, mask: Tensor,
                      x: Tensor, y: Tensor, k: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """FedTiny's client side of a progressive-pruning step: the gradient of the mean cross-entropy over the local
    data with respect to ``layer``'s weight at the broadcast weights (pruned entries zero, as the clients hold
    them), kept only where ``mask`` is 0 and only the ``k`` largest in magnitude — a top-k buffer, not a dense
    gradient, is what a memory-bound client stores and sends. Returns ``(flat indices, values)``, sorted by
    index. A pure function of its arguments."""
    model = client_model(model_fn, state)
    weight = dict(model.named_modules())[layer].weight
    model.train()
    model.zero_grad(set_to_none=True)
    bs = max(1, min(batch_size, len(y)))
    for i in range(0, len(y), bs):
        loss = nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs], reduction="sum") / len(y)
        loss.backward()
    grad = weight.grad.detach().reshape(-1)
    pruned = (mask.reshape(-1) == 0).nonzero().squeeze(1)
    k = min(int(k), pruned.numel())
    top = grad[pruned].abs().topk(k).indices
    idx = pruned[top].sort().values
    return idx, grad[idx].clone()


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


class Clients:
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


def topk_nbytes(k: int) -> int:
    """Bytes of one client's top-k upload: a float32 value and an int32 index per entry."""
    return 8 * int(k)
