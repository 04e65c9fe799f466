"""What head, neuron and layer pruning of Hugging Face models share: slicing Linear-like modules, the
guard against models that still hold pruning masks, and the check that ``from_pretrained`` rebuilds
the pruned model from its config."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...core.fraction import check_fraction
from ...core.scope import is_transposed
from ..graph.removal import _slice_param


def keep_rows_(m: nn.Module, rows: Tensor) -> None:
    """Keep output rows ``rows`` of a Linear (or transposed Conv1D) module, with its bias."""
    if is_transposed(m):
        _slice_param(m, "weight", rows, 1)
        m.nf = len(rows)
    else:
        _slice_param(m, "weight", rows, 0)
        m.out_features = len(rows)
    _slice_param(m, "bias", rows, 0)


def keep_cols_(m: nn.Module, cols: Tensor) -> None:
    """Keep input columns ``cols`` of a Linear (or transposed Conv1D) module."""
    if is_transposed(m):
        _slice_param(m, "weight", cols, 0)
        m.nx = len(cols)
    else:
        _slice_param(m, "weight", cols, 1)
        m.in_features = len(cols)


def matrix(m: nn.Module) -> Tensor:
    """A Linear-like module's weight as (out, in), detached, float64."""
    w = m.weight.detach()
    return (w.t() if is_transposed(m) else w).double()


def row_norms(w: Tensor, importance: str) -> Tensor:
    """Per-row Σ|w| (``l1``) or Σw² (``l2``) of an (out, in) matrix."""
    return w.abs().sum(1) if importance == "l1" else w.square().sum(1)


def top(scores: Tensor, keep: int) -> Tensor:
    """Indices of the ``keep`` highest scores, in ascending order (ties to the lower index)."""
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:keep]).values


UNIT_IMPORTANCES = ("l1", "l2", "random", "activation")  # how heads and neurons are ranked (channels have more)


def check_common(sparsity: Any, importance: str, calibration: Any, where: str) -> float:
    """Validate the arguments every structured transformer function shares; returns the sparsity."""
    s = check_fraction(sparsity, "sparsity", "[0, 1)", hint=f"{where} removes that fraction of the units")
    if importance not in UNIT_IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(UNIT_IMPORTANCES)}, got {importance!r}")
    if importance == "activation" and calibration is None:
        raise ValueError("importance='activation' measures activations: pass calibration= (token ids or inputs)")
    return s


def parametrized(model: nn.Module) -> list[str]:
    """``module.tensor`` names of every parametrized tensor (pruning masks included)."""
    return [f"{name}.{p}" if name else p for name, m in model.named_modules()
            if parametrize.is_parametrized(m) for p in m.parametrizations.keys()]


def guard_masks(model: nn.Module, finalize: bool, where: str) -> list[str]:
    """Refuse a model whose tensors carry parametrizations (pruning masks): slicing them would desync the
    mask and the weight. With ``finalize=True`` report the masks to bake in (see :func:`finalize_masks_`)."""
    names = parametrized(model)
    if not names:
        return []
    from ...core.mask import masked_tensors

    masks = {f"{n}.{p}" if n else p for n, _, p in masked_tensors(model)}
    others = [n for n in names if n not in masks]
    if others:
        raise ValueError(f"{where}: {len(others)} tensors carry parametrizations other than pruning masks "
                         f"({', '.join(others[:3])}); remove them (torch.nn.utils.parametrize."
                         "remove_parametrizations) before structured pruning")
    if not finalize:
        raise ValueError(f"{where}: the model holds pruning masks on {len(names)} tensors ({', '.join(names[:3])}"
                         f"{' …' if len(names) > 3 else ''}); removing rows or columns under a mask would leave the "
                         "config and the weights disagreeing. Pass finalize=True to bake the masks in first, or "
                         "call prunekit.finalize_(model)")
    return names


def finalize_masks_(model: nn.Module) -> None:
    """Bake every pruning mask into its weight (what ``finalize=True`` does before slicing)."""
    from ...core.mask import finalize_

    finalize_(model)


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are empty tensors of the same shapes on the meta device
    (no memory, no weights copied): a model to try a removal on before the real one changes."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        twin = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(twin, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else twin
    return copy.deepcopy(model, memo)


def reload_problem_after(model: nn.Module, change_: Callable[[nn.Module], None]) -> str | None:
    """:func:`reload_problem` of the model that ``change_`` would make, found on a :func:`meta_twin` before
    ``model`` itself changes (``change_`` applies the same removal and config edits to the twin)."""
    twin = meta_twin(model)
    change_(twin)
    return reload_problem(twin)


def config_accepts(config: Any, changes: dict[str, Any]) -> str | None:
    """None when ``type(config)`` accepts ``changes`` as a saved config would be read back; else why not."""
    if config is None or not hasattr(type(config), "from_dict"):
        return None
    data = {**config.to_dict(), **changes}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            type(config).from_dict(data)
    except Exception as exc:  # the config's own validation, e.g. hidden_size % num_attention_heads
        return f"{type(config).__name__} refuses it: {exc}"
    return None


def reload_problem(model: nn.Module) -> str | None:
    """None when ``from_pretrained`` on a saved copy would rebuild every tensor at the pruned shape;
    else the first reason it would not (checked on the meta device: no memory, no weights)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(type(model), "config_class"):
        return None
    why = config_accepts(config, {})
    if why:
        return why
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            fresh = type(model)(type(config).from_dict(copy.deepcopy(config.to_dict())))
    except Exception as exc:
        return f"{type(model).__name__} cannot be built from the pruned config: {exc}"
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    mine = model.state_dict()
    for k, v in mine.items():
        if k in theirs and tuple(v.shape) != theirs[k]:
            return (f"from_pretrained would build {k} as {theirs[k]} but the pruned model has {tuple(v.shape)} "
                    f"({type(config).__name__} derives that size from other fields)")
    missing = [k for k in theirs if k not in mine]
    if missing:  # the loader would leave them randomly initialised
        return (f"from_pretrained would build {missing[0]} ({len(missing)} tensors in all), which the pruned model "
                f"does not have: they would be random")
    extra = [k for k in mine if k not in theirs]
    if extra:
        return f"the pruned model's {extra[0]} ({len(extra)} tensors in all) is not built from its config"
    return None
