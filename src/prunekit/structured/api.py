"""Structured pruning of any fx-traceable model: ``prune`` (a new, smaller model) and ``prune_`` (in place).

Channels are grouped by the dependency graph (DepGraph, Fang et al., 2023), scored per group,
and the least important are physically removed, so the model gets fewer parameters and MACs.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.calling import call_model
from ..core.stats import summary
from .graph import DependencyGraph
from .trace import build_graph
from .groups import Group, choose_removed, find_groups
from .importance import IMPORTANCES, score_groups
from .removal import remove_

TARGETS = ("channels", "macs")


def _check(model: nn.Module, ratio: float, importance: str, target: str, round_to: int | None) -> None:
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be 'channels' or 'macs', got {target!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive int or None, got {round_to!r}")
    masked = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if masked:
        raise ValueError(f"{masked[0]!r} carries a pruning mask; call prunekit.finalize_(model) before structured pruning")


def groups(model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module] = ()) -> list[Group]:
    """The prunable channel groups of ``model`` (for inspection: each lists its layers and units)."""
    return find_groups(build_graph(model, example_inputs, ignore))


def _macs(model: nn.Module, example_inputs: Any) -> int:
    return summary(model, example_inputs).macs


def _plan(model: nn.Module, example_inputs: Any, ratio: float, importance: str, ignore: Iterable[nn.Module],
          global_pruning: bool, round_to: int | None, target: str, loss_fn: Callable | None,
          seed: int) -> tuple[DependencyGraph, set[int]]:
    graph = build_graph(model, example_inputs, ignore)
    found = find_groups(graph)
    scores = score_groups(found, importance, model=model, loss_fn=loss_fn, seed=seed)
    if target == "channels" or ratio == 0:
        return graph, choose_removed(found, scores, ratio, global_pruning=global_pruning, round_to=round_to)
    goal = (1 - ratio) * _macs(model, example_inputs)  # target="macs": search the channel ratio
    lo, hi = 0.0, 0.99
    best = choose_removed(found, scores, hi, global_pruning=global_pruning, round_to=round_to)
    for _ in range(12):
        mid = (lo + hi) / 2
        removed = choose_removed(found, scores, mid, global_pruning=global_pruning, round_to=round_to)
        trial = copy.deepcopy(model)
        remove_(trial, graph, removed)
        if _macs(trial, example_inputs) <= goal:
            hi, best = mid, removed
        else:
            lo = mid
    return graph, best


def _apply(model: nn.Module, graph: DependencyGraph, removed: set[int], example_inputs: Any,
           in_place: bool) -> nn.Module:
    trial = copy.deepcopy(model)
    remove_(trial, graph, removed)
    was_training = trial.training
    trial.eval()
    try:
        with torch.no_grad():
            call_model(trial, example_inputs)
    except Exception as exc:
        raise RuntimeError(
            f"the pruned model no longer runs ({type(exc).__name__}: {exc}); the model likely hard-codes a channel "
            "count (e.g. x.view(-1, 512)). Compute it from the tensor (x.flatten(1)) or pass the layer that "
            "consumes it in ignore=[...]. The original model was left unchanged."
        ) from exc
    trial.train(was_training)
    if not in_place:
        return trial
    remove_(model, graph, removed)
    return model


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance: str = "l2",
          ignore: Iterable[nn.Module] = (), global_pruning: bool = False, round_to: int | None = None,
          target: str = "channels", loss_fn: Callable[[nn.Module], Tensor] | None = None,
          seed: int = 0) -> nn.Module:
    """A new model with ``ratio`` of the channels of every coupled group removed (DepGraph, Fang et al., 2023).

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs;
    ``importance`` is ``l1``, ``l2``, ``bn_scale``, ``taylor`` (needs ``loss_fn(model) -> loss``) or
    ``random``; ``ignore`` lists modules whose output channels are kept; ``global_pruning`` ranks
    units across groups; ``round_to`` keeps channel counts multiples of it; ``target="macs"`` makes
    ``ratio`` the fraction of MACs to remove (found by bisection). The original is left unchanged.
    """
    _check(model, ratio, importance, target, round_to)
    ignore = list(ignore)
    graph, removed = _plan(model, example_inputs, ratio, importance, ignore, global_pruning, round_to, target,
                           loss_fn, seed)
    return _apply(model, graph, removed, example_inputs, in_place=False)


def prune_(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance: str = "l2",
           ignore: Iterable[nn.Module] = (), global_pruning: bool = False, round_to: int | None = None,
           target: str = "channels", loss_fn: Callable[[nn.Module], Tensor] | None = None,
           seed: int = 0) -> nn.Module:
    """:func:`prune` in place: the same choice, applied to ``model`` itself (after checking, on a copy,
    that the pruned model runs). Returns ``model``. Parameters are replaced, so build optimizers after."""
    _check(model, ratio, importance, target, round_to)
    ignore = list(ignore)
    graph, removed = _plan(model, example_inputs, ratio, importance, ignore, global_pruning, round_to, target,
                           loss_fn, seed)
    return _apply(model, graph, removed, example_inputs, in_place=True)
