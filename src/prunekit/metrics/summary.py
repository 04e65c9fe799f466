"""Summary: per-layer parameters, non-zeros, sparsity and MACs (dense and effective), and model size.

MACs come from the one counter, ``metrics/macs.py``, for one call on ``example_inputs``: every
convolution, linear layer, matrix product and attention, each on the row of the module that runs it
(attention scores and values on the attention module). Effective MACs scale each row's MACs by its
weight density: what a sparse kernel would need to do (a row without a weight, such as attention's
products, keeps all of its MACs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..infra.latency import Latency, latency
from ..core.mask import get_mask
from ..core.scope import select_targets
from ..core.stats import sparse_nbytes
from .macs import macs_by_module


@dataclass
class LayerStats:
    """One module's own parameters and compute."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    in_scope: bool
    masked: bool
    macs: int = 0
    effective_macs: int = 0
    weight_params: int = 0
    weight_nonzeros: int = 0

    @property
    def sparsity(self) -> float:
        """Sparsity of the layer's weight (of all its parameters when it has no weight)."""
        if self.weight_params:
            return 1 - self.weight_nonzeros / self.weight_params
        return 1 - self.nonzeros / self.params if self.params else 0.0


@dataclass
class ModelSummary:
    """Per-layer rows and totals; ``str()`` gives a table, :meth:`to_dict` / :meth:`to_json` give data."""

    model: str
    layers: list[LayerStats] = field(default_factory=list)
    dense_bytes: int = 0
    sparse_bytes: int = 0
    latency: dict[int, Latency] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.layers)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def scope_sparsity(self) -> float:
        rows = [r for r in self.layers if r.in_scope or r.masked]
        total = sum(r.weight_params for r in rows)
        return 1 - sum(r.weight_nonzeros for r in rows) / total if total else 0.0

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def effective_macs(self) -> int:
        return sum(r.effective_macs for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Rows and totals as plain data."""
        return {
            "model": self.model,
            "layers": [{**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity} for r in self.layers],
            "totals": {
                "params": self.params, "nonzeros": self.nonzeros, "sparsity": self.sparsity,
                "scope_sparsity": self.scope_sparsity, "macs": self.macs, "effective_macs": self.effective_macs,
                "dense_bytes": self.dense_bytes, "sparse_bytes": self.sparse_bytes,
                "latency_ms": {str(b): t.median_ms for b, t in self.latency.items()},
                "latency": {str(b): t.to_dict() for b, t in self.latency.items()},
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        head = f"{'layer':<40} {'type':<10} {'shape':<18} {'params':>11} {'nonzeros':>11} {'sparsity':>8} " \
               f"{'MACs':>12} {'eff. MACs':>12}  scope"
        lines = [f"prunekit summary of {self.model}", head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{_clip(r.name, 40):<40} {r.kind[:10]:<10} {_clip(str(tuple(r.shape)), 18):<18} {r.params:>11,} "
                f"{r.nonzeros:>11,} {r.sparsity:>8.2%} {_si(r.macs):>12} {_si(r.effective_macs):>12}  "
                f"{'pruned' if r.masked else ('yes' if r.in_scope else '-')}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<40} {'':<10} {'':<18} {self.params:>11,} {self.nonzeros:>11,} {self.sparsity:>8.2%} "
            f"{_si(self.macs):>12} {_si(self.effective_macs):>12}"
        )
        lines.append(
            f"sparsity in scope {self.scope_sparsity:.2%}; size dense {_bytes(self.dense_bytes)}, "
            f"stored sparse {_bytes(self.sparse_bytes)} ({self.dense_bytes / max(self.sparse_bytes, 1):.2f}x smaller)"
        )
        if self.latency:
            threads = next(iter(self.latency.values())).threads
            lines.append(f"CPU latency (median ± half the IQR, {threads} thread(s)): " + ", ".join(
                f"batch {b}: {t}" for b, t in self.latency.items()))
        return "\n".join(lines)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else "…" + s[-(n - 1):]


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _own_tensors(module: nn.Module) -> list[tuple[str, Tensor, Tensor | None]]:
    """(name, effective tensor, leaf parameter) for a module's own parameters, masked ones included."""
    out = []
    for pname, p in module._parameters.items():
        if p is not None:
            out.append((pname, p, p))
    if parametrize.is_parametrized(module):
        for pname in module.parametrizations:
            out.append((pname, getattr(module, pname), module.parametrizations[pname].original))
    return out


def _batch_of(inputs: Any, batch: int) -> Any:
    """``inputs`` with its first example repeated ``batch`` times along the first dimension."""
    if isinstance(inputs, Tensor):
        return inputs[:1].expand(batch, *inputs.shape[1:]).contiguous()
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_batch_of(x, batch) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _batch_of(v, batch) for k, v in inputs.items()}
    return inputs


def summary(model: nn.Module, example_inputs: Any = None, scope: Any = None,
            latency_batches: tuple[int, ...] = ()) -> ModelSummary:
    """Per-layer parameters, non-zeros, sparsity and (with ``example_inputs``) MACs of ``model``.

    MACs are those of :func:`prunekit.metrics.macs.macs_by_module` (convolutions, linear layers, matrix
    products, attention), each on the row of the module that runs it. A row's ``scope`` column says ``pruned`` for a masked tensor, ``yes`` for one the scope would
    prune, ``-`` otherwise. Tied parameters are counted once. ``latency_batches`` (e.g. ``(1, 256)``)
    also times a forward pass at each batch size (the first example repeated), on the CPU threads
    torch has (median of 10 runs after 2 warm-up runs).
    """
    if latency_batches and example_inputs is None:
        raise ValueError("latency_batches needs example_inputs= (one batch of model inputs)")
    if any(not isinstance(b, int) or b < 1 for b in latency_batches):
        raise ValueError(f"latency_batches must be positive integers, got {latency_batches!r}")
    try:
        in_scope = {id(t.module) for t in select_targets(model, scope)}
    except ValueError:
        in_scope = set()
    macs = macs_by_module(model, example_inputs).modules if example_inputs is not None else {}
    result = ModelSummary(type(model).__name__)
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations" in name:
            continue
        params = nonzeros = dense_b = sparse_b = w_params = w_nonzeros = 0
        shape: tuple[int, ...] = ()
        for pname, eff, leaf in _own_tensors(module):
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            eff = eff.detach()
            nz = int(torch.count_nonzero(eff))
            params += eff.numel()
            nonzeros += nz
            dense_b += eff.numel() * eff.element_size()
            sparse_b += sparse_nbytes(eff)
            if pname == "weight":
                shape = tuple(eff.shape)
                w_params, w_nonzeros = eff.numel(), nz
        m = macs.get(name, 0)
        if params == 0 and m == 0:
            continue
        density = w_nonzeros / w_params if w_params else 1.0
        kind = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
        result.layers.append(LayerStats(
            name or "(model)", kind.__name__, shape, params, nonzeros, id(module) in in_scope,
            get_mask(module) is not None, m, round(m * density), w_params, w_nonzeros,
        ))
        result.dense_bytes += dense_b
        result.sparse_bytes += sparse_b
    for b in latency_batches:
        result.latency[b] = latency(model, _batch_of(example_inputs, b), runs=30, warmup=2, threads=None)
    return result
