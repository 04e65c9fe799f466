"""``shrink_layers_(model, "params=0.6", calibration)``: per-layer (heterogeneous) shapes searched to a budget.

The steps (ranking, options, scores, cut) are :mod:`.perlayer`'s; this module sets the budget and runs them:

- ``params=F`` / ``memory=F``: costs are exact parameter counts; the result keeps at most ``floor(F ×
  reference)`` non-embedding parameters (``params``) or parameters in all (``memory``; one dtype, so the same
  share of bytes), where ``reference`` is the dense model's count (pass the original's when cutting an
  already-cut model in rounds, as Adapt-Pruner does).
- ``speed=S``: costs are measured seconds per decoded token (:mod:`.latency`); the predicted time is at most
  the model's measured time / S.

Every check — family, target, axes, calibration, and whether the budget can be reached at all — runs before
the model changes; an unreachable budget names the most the search can reach. Scoring runs only after that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import nn

from .api import check_calibration
from .budget import Target, non_embedding_params, parse_target
from .latency import LatencyTable, check_engine, measure_table
from .layout import width_layout
from .optimize import OPTIMIZERS, total
from .search import DEFAULT_WIDTH_MULTIPLE, resolve_width_multiple
from .perlayer import (
    DROP, Choices, LayerShapes, LayerTable, apply_layer_shapes_, block_choices, check_per_layer_axes, ffn_options,
    kv_options, layer_shapes_of, param_cost, plan_layers, rank_units, score_options,
)
from .width import param_count

DEFAULT_PER_LAYER_AXES = ("heads", "neurons")


@dataclass
class LayerShrinkReport:
    """What :func:`shrink_layers_` did: the budget, the per-block shapes before and after, the predicted loss."""

    target: str
    axes: list[str]
    optimizer: str
    before: LayerShapes
    plan: LayerShapes
    after: LayerShapes
    non_embedding_before: int
    non_embedding_after: int
    params_before: int
    params_after: int
    budget: float
    base_loss: float
    predicted_loss_increase: float
    seconds: float
    latency: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    width_multiple: int = DEFAULT_WIDTH_MULTIPLE

    @property
    def non_embedding_kept(self) -> float:
        """Share of the non-embedding parameters kept."""
        return self.non_embedding_after / self.non_embedding_before

    @property
    def params_kept(self) -> float:
        """Share of all parameters kept."""
        return self.params_after / self.params_before

    @property
    def dropped_blocks(self) -> list[int]:
        """Indices (before the cut) of the blocks removed."""
        return [i for i, (k, f) in enumerate(zip(self.plan.kv_heads, self.plan.ffn)) if (k, f) == DROP]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {"search": "per-layer", "target": self.target, "axes": self.axes, "optimizer": self.optimizer,
                "before": self.before.to_dict(), "plan": self.plan.to_dict(), "after": self.after.to_dict(),
                "dropped_blocks": self.dropped_blocks, "non_embedding_before": self.non_embedding_before,
                "non_embedding_after": self.non_embedding_after, "non_embedding_kept": self.non_embedding_kept,
                "params_before": self.params_before, "params_after": self.params_after,
                "params_kept": self.params_kept, "budget": self.budget, "base_loss": self.base_loss,
                "predicted_loss_increase": self.predicted_loss_increase, "seconds": self.seconds,
                "latency": self.latency, "notes": list(self.notes), "width_multiple": self.width_multiple}

    def __str__(self) -> str:
        drop = f"; blocks removed: {self.dropped_blocks}" if self.dropped_blocks else ""
        lat = ""
        if self.latency:
            lat = (f"; predicted decode {self.latency['predicted_speedup']:.2f}× the measured "
                   f"{1 / self.latency['dense_s']:.1f} tokens/s ({_where(self.latency)})")
        return (f"shrink per layer to {self.target} along {', '.join(self.axes)} ({self.optimizer}): {self.after}"
                f"{drop}; non-embedding parameters {self.non_embedding_before:,} → {self.non_embedding_after:,} "
                f"({self.non_embedding_kept:.1%}), all parameters {self.params_before:,} → {self.params_after:,} "
                f"({self.params_kept:.1%}); calibration loss {self.base_loss:.3f} + predicted "
                f"{self.predicted_loss_increase:.3f}{lat}; {self.seconds:.0f} s")


def _blank_table(model: nn.Module, axes: tuple[str, ...], multiple: int = DEFAULT_WIDTH_MULTIPLE) -> LayerTable:
    """The options of every block with no scores: enough to find the cheapest choice before scoring."""
    s = layer_shapes_of(model)
    row = s.queries_per_group * s.head_dim
    kvs = [kv_options(k, multiple, row) if "heads" in axes else [k] for k in s.kv_heads]
    ffns = [ffn_options(f, multiple) if "neurons" in axes else [f] for f in s.ffn]
    return LayerTable(0.0, {"attention": [[(k, 0.0) for k in ks] for ks in kvs],
                            "mlp": [[(f, 0.0) for f in fs] for fs in ffns]},
                      [0.0] * len(s.ffn) if "depth" in axes else None)


def latency_cost(model: nn.Module, table: LatencyTable):
    """Seconds per token each block option adds (negative: saved), relative to the block as it is now."""
    s = layer_shapes_of(model)

    def now(i: int) -> float:
        return table.effect("attention", s.kv_heads[i]) + table.effect("mlp", s.ffn[i])

    def cost(i: int, kv: int, f: int) -> float:
        return table.effect("attention", kv) + table.effect("mlp", f) - now(i)

    def drop(i: int) -> float:
        return -table.block - now(i)

    return cost, drop


def _costs(model: nn.Module, t: Target, latency: LatencyTable | None):
    return latency_cost(model, latency) if t.kind == "speed" else param_cost(model)  # type: ignore[arg-type]


def _measure(model: nn.Module, t: Target) -> int:
    return non_embedding_params(model) if t.kind == "params" else param_count(model)


@dataclass
class LayerBudget:
    """A checked per-layer search: the target, axes, budget, what the model may still change by, and the costs."""

    target: Target
    axes: tuple[str, ...]
    budget: float
    allowance: float
    cost: Callable[[int, int, int], float]
    drop_cost: Callable[[int], float]
    latency: LatencyTable | None = None
    width_multiple: int = DEFAULT_WIDTH_MULTIPLE


def check_layers(model: nn.Module, target: str | Target, axes: Iterable[str] = DEFAULT_PER_LAYER_AXES, *,
                 optimizer: str = "milp", reference: int | None = None, latency: LatencyTable | None = None,
                 threads: int | None = 1, speed_engine: str = "transformers",
                 speed_quant: str | None = None, width_multiple: int | None = None) -> LayerBudget:
    """Every check of :func:`shrink_layers_` but the calibration's, the latency table measured for ``speed=`` (when
    not given; in ``speed_engine``, at GGUF type ``speed_quant`` for llama.cpp), and the budget; one ValueError
    naming what the search can reach when it is out of reach. Changes nothing."""
    width_layout(model)
    t = parse_target(target)
    if (speed_engine, speed_quant) != ("transformers", None):
        if t.kind != "speed":
            raise ValueError(f"a speed engine times the speed= target; target {t} counts parameters")
        if latency is None:
            check_engine(speed_engine, speed_quant)  # llama.cpp built, the type known: before any probe is built
    chosen = check_per_layer_axes(axes)
    width_multiple = resolve_width_multiple(width_multiple, [speed_quant])
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, int) or reference < 1):
        raise ValueError(f"reference must be a positive parameter count, got {reference!r}")
    if reference is not None and t.kind == "speed":
        raise ValueError("reference= is a parameter count; speed= is measured against the model as it is")
    shapes = layer_shapes_of(model)
    if t.kind == "speed":
        if latency is None:
            row = shapes.queries_per_group * shapes.head_dim
            widths = {k for kv in shapes.kv_heads for k in kv_options(kv, width_multiple, row)}
            ffns = {f for w in shapes.ffn for f in ffn_options(w, width_multiple)}
            latency = measure_table(model, widths | set(shapes.kv_heads), ffns | set(shapes.ffn), threads=threads,
                                    engine=speed_engine, quant=speed_quant)
        budget: float = latency.dense_s / t.fraction
        allowance = budget - latency.dense_s
    else:
        ref = reference if reference is not None else _measure(model, t)
        budget = math.floor(t.fraction * ref)
        allowance = budget - _measure(model, t)
    cost, drop_cost = _costs(model, t, latency)
    blank = block_choices(model, _blank_table(model, chosen, width_multiple), cost, drop_cost)
    cheapest = sum(min(o.cost for o in g) for g in blank.groups)
    if cheapest > allowance:
        raise ValueError(_unreachable(model, t, chosen, latency, cheapest, allowance))
    return LayerBudget(t, chosen, budget, allowance, cost, drop_cost, latency, width_multiple)


def shrink_layers_(model: nn.Module, target: str | Target, calibration: Any,
                   axes: Iterable[str] = DEFAULT_PER_LAYER_AXES, *, optimizer: str = "milp",
                   reference: int | None = None, latency: LatencyTable | None = None, threads: int | None = 1,
                   score_on: Any = None, progress: bool = False, speed_engine: str = "transformers",
                   speed_quant: str | None = None, width_multiple: int | None = None) -> LayerShrinkReport:
    """Cut ``model`` in place to per-block shapes under ``target`` (see the module docstring) along ``axes``
    (``heads``: key/value groups, ``neurons``: MLP width, ``depth``: whole blocks may go), chosen by
    ``optimizer`` (``milp``: exact; ``greedy``). ``latency``: a table measured before (else measured here, with
    ``threads``, for ``speed=``, in ``speed_engine``: ``transformers`` or ``llama.cpp``, whose GGUF type is
    ``speed_quant``, q8_0 by default). ``score_on``: the windows options are scored on (default ``calibration``, which
    always ranks the units). ``width_multiple``: MLP widths (and ``o_proj`` rows) offered are multiples of it (32 as
    :func:`~.search.round_width` rounds; 256, strict, for llama.cpp's K-quants; None: 256 when ``speed_quant`` is a
    K-quant, else 32). Returns a :class:`LayerShrinkReport`."""
    start = time.perf_counter()
    check_calibration(model, calibration)
    if score_on is not None:
        check_calibration(model, score_on)
    b = check_layers(model, target, axes, optimizer=optimizer, reference=reference, latency=latency, threads=threads,
                     speed_engine=speed_engine, speed_quant=speed_quant, width_multiple=width_multiple)
    t, chosen, latency, budget, allowance, cost, drop_cost = (b.target, b.axes, b.latency, b.budget, b.allowance,
                                                              b.cost, b.drop_cost)
    width_multiple = b.width_multiple
    shapes = layer_shapes_of(model)
    notes: list[str] = []
    if "heads" in chosen and max(shapes.kv_heads) == 1:
        notes.append("one key/value group (multi-query attention): heads are kept")
    lat_info = None
    ranking = rank_units(model, calibration)
    table = score_options(model, calibration if score_on is None else score_on, ranking, chosen, progress,
                          width_multiple)
    choices: Choices = block_choices(model, table, cost, drop_cost)
    plan = plan_layers(model, choices, allowance, optimizer)
    picks = [choices.pairs[i].index((k, f)) for i, (k, f) in enumerate(zip(plan.kv_heads, plan.ffn))]
    spent, predicted = total(choices.groups, picks)
    ne_before, p_before = non_embedding_params(model), param_count(model)
    apply_layer_shapes_(model, plan, ranking)
    if t.kind != "speed" and _measure(model, t) > budget:
        raise RuntimeError(f"the per-layer cut kept {_measure(model, t):,} where the budget is {budget:,}; please "
                           "report this")
    notes += _unaligned_rows(model, width_multiple)
    if latency is not None:
        predicted_s = latency.dense_s + spent
        lat_info = {**latency.to_dict(), "predicted_s": predicted_s, "predicted_speedup": latency.dense_s / predicted_s}
    return LayerShrinkReport(str(t), list(chosen), optimizer, shapes, plan, layer_shapes_of(model), ne_before,
                             non_embedding_params(model), p_before, param_count(model), float(budget),
                             table.base_loss, predicted, time.perf_counter() - start, lat_info, notes, width_multiple)


def _unaligned_rows(model: nn.Module, multiple: int) -> list[str]:
    """What a strict width multiple could not make a multiple of it (the widths the search keeps), in words."""
    from .budget import Shape
    from .search import unaligned

    if multiple == DEFAULT_WIDTH_MULTIPLE:
        return []
    s = layer_shapes_of(model)
    hidden = int(model.config.hidden_size)
    out = set()
    for kv, f in zip(s.kv_heads, s.ffn):
        out.update(unaligned(Shape(hidden, kv * s.queries_per_group, kv, s.head_dim, f, 1), multiple))
    return sorted(out)


def _unreachable(model: nn.Module, t: Target, axes: tuple[str, ...], latency: LatencyTable | None, cheapest: float,
                 allowance: float) -> str:
    if t.kind == "speed":
        assert latency is not None
        best = latency.dense_s / (latency.dense_s + cheapest)
        return (f"target {t} cannot be reached with axes {', '.join(axes)}: the fastest per-layer shape is predicted at "
                f"{best:.2f}× the dense model's measured decode speed ({1 / latency.dense_s:.1f} tokens/s, "
                f"{_where(latency.to_dict())}); "
                f"ask for speed={math.floor(best * 100) / 100:g} or less" + ("" if "depth" in axes else ", or add depth"))
    now = _measure(model, t)
    reach = (now + cheapest) / (now + allowance) * t.fraction
    what = "non-embedding parameters" if t.kind == "params" else "parameters"
    return (f"target {t} cannot be reached with axes {', '.join(axes)}: the smallest per-layer shape keeps "
            f"{reach:.1%} of the {what}; ask for {t.kind}={math.ceil(reach * 100) / 100:g} or more"
            + ("" if "depth" in axes else ", or add depth"))


def _where(latency: dict[str, Any]) -> str:
    """Where and how a latency table was timed, in words."""
    threads = latency.get("threads") or 1
    if latency.get("engine") == "llama.cpp":
        return f"llama.cpp, GGUF {latency.get('quant')}, {threads} thread{'s' if threads > 1 else ''}"
    return f"transformers, {threads} thread{'s' if threads > 1 else ''}, CPU time"
