"""Scope: which weight tensors of a model may be pruned.

The default follows the literature: the weights of Linear and Conv layers, leaving out
embeddings, norms, biases, the first convolution, the output layer and any weight tied to
another module (e.g. an LM head tied to the token embeddings).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from torch import nn

from .mask import get_mask, weight_of

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_transposed(module: nn.Module) -> bool:
    """Whether a module stores its weight as (in, out): transformers' ``Conv1D`` (GPT-2) does.

    Such a module is treated as a Linear layer: it is in scope wherever ``nn.Linear`` is, and
    patterns run on its weight seen as (out, in).
    """
    return hasattr(module, "nf") and any(c.__name__ == "Conv1D" for c in type(module).__mro__)


@dataclass(frozen=True)
class Target:
    """One prunable tensor: the module that holds it and the parameter's name (``weight``)."""

    name: str
    module: nn.Module
    param: str = "weight"

    @property
    def numel(self) -> int:
        return weight_of(self.module, self.param).numel()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(weight_of(self.module, self.param).shape)

    @property
    def transposed(self) -> bool:
        """True when the weight is stored as (in, out) (see :func:`is_transposed`)."""
        return is_transposed(self.module)

    @property
    def matrix_shape(self) -> tuple[int, ...]:
        """The weight's shape as (out, in, *kernel), the layout patterns work on."""
        shape = self.shape
        return (shape[1], shape[0], *shape[2:]) if self.transposed else shape


@dataclass
class Scope:
    """Which tensors to prune.

    ``types``: module classes whose ``weight`` may be pruned. ``include``/``exclude``: globs on
    module names (``"model.layers.*.mlp.*"``); when ``include`` is given, only matching modules are
    taken. ``skip_first_conv`` and ``skip_output`` leave out the first convolution (the stem; not a
    convolution inside a block of an ``nn.ModuleList``, which is treated as the same conv of every other
    block) and the output layer (the model's ``get_output_embeddings()`` when it has one, else its last Linear/Conv).
    """

    types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES
    include: Sequence[str] | None = None
    exclude: Sequence[str] = field(default_factory=tuple)
    skip_first_conv: bool = True
    skip_output: bool = True


def as_scope(scope: Scope | dict | Sequence[str] | str | None) -> Scope:
    """Turn the forms a user may pass (None, a Scope, a dict of Scope fields, glob(s)) into a Scope."""
    if scope is None:
        return Scope()
    if isinstance(scope, Scope):
        return scope
    if isinstance(scope, dict):
        unknown = set(scope) - set(Scope.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown scope option(s) {sorted(unknown)}; known: {sorted(Scope.__dataclass_fields__)}"
            )
        return Scope(**scope)
    if isinstance(scope, str):
        return Scope(include=[scope])
    if isinstance(scope, Iterable):
        return Scope(include=list(scope))
    raise TypeError(f"scope must be a Scope, a dict, a glob or a list of globs, got {type(scope).__name__}")


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _output_module(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> nn.Module | None:
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (NotImplementedError, AttributeError):
            out = None
        if isinstance(out, nn.Module):
            return out
        # A Hugging Face model without a head (e.g. BertModel) has no output layer to keep.
        if hasattr(model, "config"):
            return None
    return candidates[-1][1] if candidates else None


def _tied_weight_ids(model: nn.Module) -> set[int]:
    """ids of parameters that more than one module holds (tied weights)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, n in owners.items() if n > 1}


def _in_repeated_block(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` lies inside an entry of an ``nn.ModuleList`` (a transformer's or a Mamba's
    blocks): such a conv is one of many alike, not a network's stem, and is treated as its siblings are."""
    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n]
    return any(name.startswith(n + ".") for n in lists)


def select_targets(model: nn.Module, scope: Scope | dict | Sequence[str] | str | None = None) -> list[Target]:
    """Return the tensors of ``model`` that ``scope`` allows to be pruned, in module order.

    Raises a ValueError when the scope matches nothing.
    """
    sc = as_scope(scope)
    linear_ok = any(issubclass(nn.Linear, t) for t in sc.types)
    candidates = [
        (name, m) for name, m in model.named_modules()
        if (isinstance(m, sc.types) or (linear_ok and is_transposed(m)))
        and not name.endswith("parametrizations") and ".parametrizations." not in name
    ]
    skipped: set[int] = set()
    if sc.skip_first_conv:
        first = next(((n, m) for n, m in candidates if isinstance(m, CONV_TYPES)), None)
        if first is not None and not _in_repeated_block(model, first[0]):
            skipped.add(id(first[1]))
    if sc.skip_output:
        out = _output_module(model, candidates)
        if out is not None:
            skipped.add(id(out))
    tied = _tied_weight_ids(model)
    targets = []
    for name, m in candidates:
        if id(m) in skipped:
            continue
        if sc.include is not None and not _matches(name, sc.include):
            continue
        if _matches(name, sc.exclude):
            continue
        weight = weight_of(m, "weight")
        leaf = m.parametrizations.weight.original if hasattr(m, "parametrizations") else weight
        if id(leaf) in tied:
            continue
        targets.append(Target(name, m))
    if not targets:
        raise ValueError(
            f"the scope matches no prunable tensor in {type(model).__name__} "
            f"(types={[t.__name__ for t in sc.types]}, include={sc.include}, exclude={list(sc.exclude)}, "
            f"skip_first_conv={sc.skip_first_conv}, skip_output={sc.skip_output}); "
            "check the globs against the names in model.named_modules()"
        )
    return targets


def targets_sparsity(targets: Sequence[Target]) -> float:
    """The fraction of the targets' weights their masks prune (0 for tensors without a mask)."""
    total = zeros = 0
    for t in targets:
        mask = get_mask(t.module, t.param)
        total += t.numel
        zeros += 0 if mask is None else int(mask.numel() - mask.sum())
    return zeros / total if total else 0.0
