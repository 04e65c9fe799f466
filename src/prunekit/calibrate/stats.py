"""The one collector of input statistics: per-column squared norms ‖X_j‖² (Wanda, activation
importances of heads and neurons) and the Gram matrix X·Xᵀ (SparseGPT's Hessian), over calibration
tokens, for Linear-like modules and for the experts of fused MoE parameters. Every engine (the
two-pass block loop, the one-pass and staged engines of :mod:`.onepass`, whole-model collection)
accumulates through :meth:`InputStats.record` / :meth:`InputStats.add`, so the arithmetic is one.

Layers that read the very same input tensor (a block's q/k/v projections, the MLP's gate and up)
share one accumulator, so each distinct input is summed once. Fused experts (transformers 5 stores
an MoE block's experts as 3-D ``gate_up_proj`` / ``down_proj`` parameters) are accumulated per
expert, over the tokens the router sent to that expert only.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from .moe import FusedExperts, expert_inputs


GRAM_PIECES = 8  # row strips of a Gram accumulator: 36/64 of one product's work (README, issue 26 round 10)


def gram_bounds(d: int, pieces: int = GRAM_PIECES) -> list[int]:
    """Where the column blocks of a ``d``-wide Gram matrix start and end (one block below 256 columns)."""
    pieces = 1 if d < 256 else pieces
    return [round(i * d / pieces) for i in range(pieces + 1)]


def add_upper_gram_(acc: Tensor, x: Tensor, pieces: int = GRAM_PIECES) -> Tensor:
    """``acc`` += the blocks of xᵀx on and above the block diagonal, for a (tokens, d) ``x``; returns ``acc``.

    One product per strip of rows (the strip's diagonal block and everything right of it), added into ``acc`` in
    place, on column slices of ``x`` (views: nothing is copied): (pieces + 1) / (2 · pieces) of the work of one
    product, 9/16 for 8 pieces. The blocks below the diagonal of ``acc`` are not touched: read the sum through
    :func:`symmetrized`."""
    bounds = gram_bounds(x.shape[1], pieces)
    for lo, hi in zip(bounds, bounds[1:]):
        acc[lo:hi, lo:].addmm_(x[:, lo:hi].t(), x[:, lo:])
    return acc


def symmetrized(acc: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is ``acc``'s: what an accumulator of
    :func:`add_upper_gram_` sums to (a new matrix)."""
    upper = acc.triu()
    return upper + upper.triu(1).t()


def mirror_upper_(acc: Tensor, pieces: int = GRAM_PIECES) -> Tensor:
    """Make ``acc`` symmetric in place, its lower triangle copied from its upper one (the same values as
    :func:`symmetrized`, with no matrix-sized temporary: one block at a time); returns ``acc``. Idempotent, and
    an accumulator of :func:`add_upper_gram_` may take more rows afterwards (its upper blocks stay the sum)."""
    bounds = gram_bounds(acc.shape[0], pieces)
    n = len(bounds) - 1
    for i in range(n):
        rows = slice(bounds[i], bounds[i + 1])
        diag = acc[rows, rows]
        diag.copy_(diag.triu() + diag.triu(1).t())
        for j in range(i + 1, n):
            cols = slice(bounds[j], bounds[j + 1])
            acc[cols, rows].copy_(acc[rows, cols].t())
    return acc


def symmetric_gram(x: Tensor, pieces: int = GRAM_PIECES) -> Tensor:
    """xᵀx for a (tokens, d) matrix, computing only the blocks on and above the diagonal and mirroring the
    rest; exactly symmetric."""
    return symmetrized(add_upper_gram_(x.new_zeros(x.shape[1], x.shape[1]), x, pieces))


STATS_CHUNK_TOKENS = 4096


def row_chunks(x: Tensor, dtype: torch.dtype = torch.float32, tokens: int | None = None) -> Iterator[Tensor]:
    """The rows of ``x`` (…, d) as ``dtype`` (n, d) pieces of at most about ``tokens`` rows
    (:data:`STATS_CHUNK_TOKENS`), in order, without a copy of the whole of ``x``: a contiguous ``x`` is only
    viewed (and converted piece by piece), any other is copied one slice of its first dimension at a time."""
    tokens = STATS_CHUNK_TOKENS if tokens is None else tokens
    x = x.detach()
    d = x.shape[-1]
    if x.dim() < 2 or x.is_contiguous():
        flat = x.reshape(-1, d)
        for i in range(0, flat.shape[0], tokens):
            yield flat[i:i + tokens].to(dtype)
        return
    per = max(1, x[0].numel() // d)  # rows in one slice along the first dimension
    step = max(1, tokens // per)
    for i in range(0, x.shape[0], step):
        yield x[i:i + step].reshape(-1, d).to(dtype)


def input_sums(x: Tensor, hessian: bool, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor | None, int]:
    """(Σ x², Σ x·xᵀ or None, rows) over the rows of ``x`` (…, d) in ``dtype``, summed over pieces of
    :data:`STATS_CHUNK_TOKENS` rows so that no full-size copy or square of ``x`` is ever made. With ``hessian``
    Σ x² is the Gram matrix's diagonal (no second pass over ``x``)."""
    d = x.shape[-1]
    if hessian:
        acc = torch.zeros(d, d, dtype=dtype, device=x.device)
        rows = add_rows_(acc, x, hessian=True)
        gram = symmetrized(acc)
        return gram.diagonal().clone(), gram, rows
    sq = torch.zeros(d, dtype=dtype, device=x.device)
    return sq, None, add_rows_(sq, x, hessian=False)


def add_rows_(acc: Tensor, x: Tensor, hessian: bool) -> int:
    """Add the rows of ``x`` (…, d) into ``acc``: the upper blocks of Σ x·xᵀ (``hessian``, see
    :func:`add_upper_gram_`) or Σ x²; in pieces of :data:`STATS_CHUNK_TOKENS` rows in ``acc``'s dtype.
    Returns the number of rows."""
    rows = 0
    for c in row_chunks(x, acc.dtype):
        if hessian:
            add_upper_gram_(acc, c)
        else:
            acc.add_(c.square().sum(0))
        rows += c.shape[0]
    return rows


class InputStats:
    """Accumulates statistics of the inputs of ``modules`` (and of ``experts``' per-expert matrices)
    while hooks are attached (use as a context manager).

    ``experts`` maps a name to a :class:`~prunekit.calibrate.moe.FusedExperts`; the statistics of its
    expert ``e`` are found under ``f"{name}.gate_up_proj[{e}]"`` and ``f"{name}.down_proj[{e}]"``
    (see :meth:`FusedExperts.key`). Only weak references to the inputs are kept (to recognise a shared
    input), so an input is freed as soon as the forward is done with it.
    """

    def __init__(self, modules: Mapping[str, nn.Module] | None = None, hessian: bool = False,
                 experts: Mapping[str, FusedExperts] | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.modules = dict(modules or {})
        self.experts = dict(experts or {})
        self.hessian = hessian
        self.dtype = dtype
        self.sq_norms: dict[str, Tensor] = {}
        self.grams: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.owner: dict[str, str] = {}  # module name → the module whose accumulator it shares
        self._seen: list[tuple[weakref.ref, str]] = []
        self._handles: list = []

    def __enter__(self) -> "InputStats":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        for name, fused in self.experts.items():
            self._handles.append(fused.module.register_forward_pre_hook(self._expert_hook(name, fused),
                                                                        with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()

    def new_call(self) -> None:
        """Mark the start of a block (or model) call: inputs seen before cannot be shared with the next ones."""
        self._seen.clear()

    def add(self, key: str, x: Tensor) -> None:
        """Add the rows of ``x`` (…, in) to the statistics kept under ``key``. With ``hessian`` the Gram matrix
        is accumulated (its upper blocks, :func:`add_upper_gram_`) and Σ x² is a view of its diagonal."""
        self.owner.setdefault(key, key)
        if key not in self.sq_norms:
            d = x.shape[-1]
            if self.hessian:
                self.grams[key] = torch.zeros(d, d, dtype=self.dtype, device=x.device)
                self.sq_norms[key] = self.grams[key].diagonal()
            else:
                self.sq_norms[key] = torch.zeros(d, dtype=self.dtype, device=x.device)
            self.tokens[key] = 0
        acc = self.grams[key] if self.hessian else self.sq_norms[key]
        self.tokens[key] += add_rows_(acc, x, self.hessian)

    def record(self, name: str, x: Tensor) -> None:
        """Add the input ``x`` of module ``name`` — or, when a module seen before in this call read the very
        same tensor (q/k/v, gate/up), let ``name`` share that module's statistics."""
        if name not in self.owner:
            same = next((n for t, n in self._seen if t() is x), None)
            self.owner[name] = same or name
        self._seen.append((weakref.ref(x), name))
        if self.owner[name] == name:
            self.add(name, x)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.record(name, args[0])
        return hook

    def _expert_hook(self, name: str, fused: FusedExperts):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            for e, param, x in expert_inputs(fused, args, kwargs):
                self.add(fused.key(param, e), x)
        return hook

    def seen(self, name: str) -> bool:
        """Whether module (or expert matrix) ``name`` received any calibration token."""
        return self.tokens.get(self.owner.get(name, name), 0) > 0

    def col_norms(self, name: str) -> Tensor:
        """‖X_j‖₂ for every input column j of module ``name`` (over all calibration tokens)."""
        return self.sq_norms[self.owner[name]].sqrt()

    def mean_squares(self, name: str) -> Tensor:
        """E[x_j²] for every input column j of module ``name``."""
        return self.sq_norms[self.owner[name]] / max(self.n_tokens(name), 1)

    def gram(self, name: str) -> Tensor:
        """X·Xᵀ summed over calibration tokens (in × in) for module ``name``: the accumulator itself, made exactly
        symmetric in place (:func:`mirror_upper_`; no copy of it at the walk's peak). Read-only for callers."""
        return mirror_upper_(self.grams[self.owner[name]])

    def n_tokens(self, name: str) -> int:
        """How many tokens module ``name``'s statistics were collected over (0 when it saw none)."""
        return self.tokens.get(self.owner.get(name, name), 0)


@torch.no_grad()
def collect_input_stats(model: nn.Module, modules: Mapping[str, nn.Module], calibration: Any, *,
                        experts: Mapping[str, FusedExperts] | None = None, hessian: bool = False,
                        dtype: torch.dtype = torch.float64) -> InputStats:
    """Run the whole model over ``calibration`` (any form :func:`calibration_batches` takes) with hooks on
    ``modules`` (and on fused ``experts``); returns their input statistics. The model is left in the mode
    it was in."""
    from ..infra.calling import call_model
    from .batches import calibration_batches
    from .blockwise import model_call_options

    batches = calibration_batches(calibration)
    options = model_call_options(model)
    stats = InputStats(modules, hessian=hessian, experts=experts, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with stats:
            for batch in batches:
                stats.new_call()
                call_model(model, {**batch, **options} if isinstance(batch, dict) else batch)
    finally:
        model.train(was_training)
    return stats
