"""The units of a transformer — heads, neurons, layers — each with its typed config and its one function, in
:data:`TRANSFORMER_UNITS`; ``prune_transformer_`` runs one of them. ``prunekit.structured.prune_(what=…)``
(the front door for every unit, channels included) calls it for the transformer units."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Union

from torch import nn

from ...core.config import Config
from ...core.deprecation import renamed_args
from ...core.fraction import Sparsity, check_fraction
from ...core.registry import Registry
from .blocks import LayerPruneReport, prune_layers_
from .common import UNIT_IMPORTANCES
from .heads import HeadPruneReport, prune_heads_
from .neurons import NeuronPruneReport, prune_neurons_

Importance = Optional[Literal[UNIT_IMPORTANCES]]


class HeadsConfig(Config):
    """Settings of :func:`prunekit.structured.prune_heads_` (``importance`` None: ``activation`` when there is
    calibration, else ``l2``)."""

    what: Literal["heads"] = "heads"
    sparsity: Sparsity = 0.25
    importance: Importance = None
    unit: Literal["auto", "group", "query"] = "auto"
    seed: int = 0
    finalize: bool = False
    reloadable: bool = True
    strict: bool = False


class NeuronsConfig(Config):
    """Settings of :func:`prunekit.structured.prune_neurons_`."""

    what: Literal["neurons"] = "neurons"
    sparsity: Sparsity = 0.25
    importance: Importance = None
    seed: int = 0
    finalize: bool = False
    reloadable: bool = True


class LayersConfig(Config):
    """Settings of :func:`prunekit.structured.prune_layers_` (blocks by ShortGPT's Block Influence, or
    FinerCut's sublayers); ``sparsity`` is the fraction of blocks (sublayers) removed."""

    what: Literal["layers"] = "layers"
    sparsity: Sparsity = 0.25
    unit: Literal["block", "sublayer"] = "block"
    reloadable: bool = True


TransformerConfig = Union[HeadsConfig, NeuronsConfig, LayersConfig]
Report = Union[HeadPruneReport, NeuronPruneReport, LayerPruneReport]


def _heads(model: nn.Module, cfg: HeadsConfig, calibration: Any, progress: bool) -> HeadPruneReport:
    return prune_heads_(model, cfg.sparsity, _importance(cfg.importance, calibration), cfg.seed, calibration,
                        unit=cfg.unit, finalize=cfg.finalize, reloadable=cfg.reloadable, strict=cfg.strict)


def _neurons(model: nn.Module, cfg: NeuronsConfig, calibration: Any, progress: bool) -> NeuronPruneReport:
    return prune_neurons_(model, cfg.sparsity, _importance(cfg.importance, calibration), cfg.seed, calibration,
                          finalize=cfg.finalize, reloadable=cfg.reloadable)


def _layers(model: nn.Module, cfg: LayersConfig, calibration: Any, progress: bool) -> LayerPruneReport:
    if calibration is None:
        raise ValueError("what='layers' ranks blocks on data: pass calibration= (a batch of token ids or inputs)")
    return prune_layers_(model, calibration, sparsity=cfg.sparsity, unit=cfg.unit, progress=progress,
                         reloadable=cfg.reloadable)


def _importance(importance: str | None, calibration: Any) -> str:
    return importance or ("activation" if calibration is not None else "l2")


TRANSFORMER_UNITS: Registry[Callable[..., Report]] = Registry("transformer unit", key="what")
TRANSFORMER_UNITS.add("heads", _heads, config=HeadsConfig)
TRANSFORMER_UNITS.add("neurons", _neurons, config=NeuronsConfig)
TRANSFORMER_UNITS.add("layers", _layers, config=LayersConfig)


@renamed_args(ratio="sparsity")
def prune_transformer_(model: nn.Module, what: str | TransformerConfig | dict = "heads", sparsity: float | None = None,
                       calibration: Any = None, importance: str | None = None, progress: bool = False,
                       **options: Any) -> Report:
    """Shrink a Hugging Face transformer in place: remove ``sparsity`` of its attention heads (whole GQA
    groups), of its MLP neurons, or of its blocks (``layers``: ShortGPT Block Influence on ``calibration``,
    which is then required). ``what`` is a name, a config (:class:`HeadsConfig`, :class:`NeuronsConfig`,
    :class:`LayersConfig`) or a dict with ``what``; keywords override its fields. Heads and neurons are ranked
    by ``importance``: by default ``activation`` when ``calibration`` is given, else ``l2``. Returns the
    report of the kind pruned (each has ``to_dict()`` and counts parameters before and after)."""
    if isinstance(what, str) and what not in TRANSFORMER_UNITS.names():
        hint = " (channels: prunekit.structured.prune_ with example inputs)" if what == "channels" else ""
        raise ValueError(f"what must be one of {', '.join(TRANSFORMER_UNITS.names())}, got {what!r}{hint}")
    fields = dict(options)
    if sparsity is not None:
        fields["sparsity"] = check_fraction(sparsity, "sparsity", "[0, 1)")
    if importance is not None:
        fields["importance"] = importance
    data = {"what": what} if isinstance(what, str) else what
    cfg = TRANSFORMER_UNITS.parse_config(data, **fields)
    return TRANSFORMER_UNITS.get(cfg.what)(model, cfg, calibration, progress)
