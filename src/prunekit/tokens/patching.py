"""The one mechanism behind every token patch: set attributes (an instance ``forward``, a module's
``config``, a flag) and remember what was there, so that :func:`unpatch_` puts back exactly the
original objects.

Patches are plain attribute changes — no forward hooks, no class swaps — and the wrappers are small
callable objects that hold their module, so a ``copy.deepcopy`` of a patched model is a consistent,
independently patched copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

STATE_ATTR = "_prunekit_tokens"


class _Missing:
    """Marks an attribute that was not set before a patch (one object, kept by copy and pickle)."""

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return "_MISSING"

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


@dataclass
class PatchRecord:
    """The attributes a patch changed, in order, with their previous values."""

    changes: list[tuple[Any, str, Any]] = field(default_factory=list)

    def set(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` (bypassing ``nn.Module.__setattr__``'s registration), remembering
        the previous own attribute (or its absence)."""
        before = obj.__dict__.get(name, _MISSING)
        self.changes.append((obj, name, before))
        object.__setattr__(obj, name, value)

    def undo(self) -> None:
        """Put every changed attribute back, newest first."""
        while self.changes:
            obj, name, before = self.changes.pop()
            if before is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, before)


@dataclass
class Patch:
    """What is attached to a patched model: the record to undo, the report, and the runtime state
    the wrappers share."""

    method: str
    record: PatchRecord
    runtime: Any
    report: Any


def patch_of(model: nn.Module) -> Patch | None:
    """The token patch on ``model`` itself, or None."""
    return model.__dict__.get(STATE_ATTR)


def find_patched(model: nn.Module) -> tuple[str, Patch] | None:
    """The first module in ``model`` (itself included) that carries a token patch, with its name."""
    for name, module in model.named_modules():
        patch = module.__dict__.get(STATE_ATTR)
        if patch is not None:
            return name, patch
    return None


def attach(model: nn.Module, patch: Patch) -> None:
    """Record ``patch`` on ``model`` (undone with the rest by :func:`detach`)."""
    patch.record.set(model, STATE_ATTR, patch)


def detach(model: nn.Module) -> Patch:
    """Undo the patch on ``model`` and return it."""
    patch = patch_of(model)
    if patch is None:
        raise ValueError(f"{type(model).__name__} carries no token patch")
    patch.record.undo()
    return patch


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` or any module inside it carries a token patch."""
    return find_patched(model) is not None
