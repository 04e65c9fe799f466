"""The rules: how each torch operation moves channel labels through the graph (one module per kind of operation).

:func:`dispatch` is called by the recorder after every torch function of the forward pass. Operations
are sorted into kinds: elementwise (labels carried, operands united, parameters that meet the
channels become members: layer scales, norm weights, position embeddings; :mod:`.elementwise`), shape
operations (followed exactly by running the same operation on a probe tensor, :mod:`.shapes`), joins
and reductions (:mod:`.joins`), contractions (Linear, matmul, einsum, attention, :mod:`.contract`),
convolutions, norms and embeddings (:mod:`.layers`). An operation of no known kind pins the channels
it touches and is reported by name (``strict=True`` makes it an error).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..depgraph import PVal, Val
from ..recorder import Recorder, _outputs, pointwise_tag
from . import contract, joins, layers, shapes
from .elementwise import (
    BINARY, CARRY, PRODUCERS, UNTRACKED, WRITES, _has_tensor, base_name, carry, elementwise, merge_params, tensor_args,
)
from .shapes import SHAPE_OPS, follow_params

HANDLERS: dict[str, Callable] = {**shapes.HANDLERS, **joins.HANDLERS, **contract.HANDLERS, **layers.HANDLERS}


def dispatch(rec: Recorder, func: Callable, name: str, args: tuple, kwargs: dict, result: Any) -> None:
    """Compute the labels of ``result`` from those of the inputs (and record members / pins)."""
    tensors = tensor_args(args, kwargs)
    infos = [rec.info(t) for t in tensors]
    tracked = [i for i in infos if isinstance(i, Val)]
    has_param = any(isinstance(i, PVal) for i in infos)
    if not tracked and not has_param and name not in PRODUCERS:
        rec.set_all(result, None)
        return
    if name in UNTRACKED:
        _mark_derived(rec, result)
        return
    handler = HANDLERS.get(name)
    if name in WRITES:
        handler(rec, func, name, args, kwargs, result)
        return
    if not _has_tensor(result):
        return
    if handler is None:
        base = base_name(name)
        handler = HANDLERS.get(base)
        if handler is None and (name in CARRY or base in CARRY):
            handler = carry
        elif handler is None and (name in BINARY or base in BINARY or pointwise_tag(base)):
            handler = elementwise
    if not tracked and base_name(name) in PRODUCERS and handler is not None:  # a weight makes new channels
        handler(rec, func, name, args, kwargs, result)
        return
    if not tracked:  # parameters only: follow them through views and elementwise ops, or lose them
        _params_only(rec, func, name, handler, args, kwargs, result)
        return
    if handler is None:
        rec.unknown(name, tracked)
        rec.set_all(result, None)
        return
    handler(rec, func, name, args, kwargs, result)


def _params_only(rec: Recorder, func: Callable, name: str, handler: Callable | None, args: tuple, kwargs: dict,
                 result: Any) -> None:
    if handler is carry and isinstance(result, Tensor):
        first = next((a for a in args if isinstance(a, Tensor)), None)
        info = rec.info(first)
        rec.set(result, info if isinstance(info, PVal) and first.shape == result.shape else None)
    elif handler is elementwise and isinstance(result, Tensor):
        rec.set(result, merge_params(rec, args, kwargs, result))
    elif name in SHAPE_OPS:
        follow_params(rec, func, name, args, kwargs, result)
    else:
        rec.set_all(result, None)
    _mark_derived(rec, [o for o in _outputs(result) if rec.info(o) is None])


def _mark_derived(rec: Recorder, result: Any) -> None:
    """Results computed from parameters by operations the graph does not follow, and factory tensors:
    their shapes may change after pruning without harm, so the check does not predict them."""
    for o in _outputs(result):
        rec.derived.add(id(o))
        rec._keep.append(o)
