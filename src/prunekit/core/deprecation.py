"""Deprecated argument names: accepted for one release, with a warning that names the new one."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class PrunekitDeprecationWarning(FutureWarning):
    """An argument or function name that prunekit will stop accepting in the next release.

    A FutureWarning, so that users see it by default (a DeprecationWarning is hidden outside ``__main__``).
    """


def warn_renamed(old: str, new: str, where: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is a deprecated name of ``new`` in ``where``."""
    warnings.warn(f"{where}: {old}= is deprecated, use {new}= (the old name goes in the next release)",
                  PrunekitDeprecationWarning, stacklevel=stacklevel)


def take_renamed(kwargs: dict[str, Any], renames: dict[str, str], where: str, stacklevel: int = 4) -> dict[str, Any]:
    """Move each deprecated key of ``kwargs`` (``renames``: old → new) to its new name, warning once
    for each; passing both names is a TypeError. Returns ``kwargs`` changed in place."""
    for old, new in renames.items():
        if old not in kwargs:
            continue
        if new in kwargs:
            raise TypeError(f"{where}: pass {new}= only ({old}= is its deprecated name), not both")
        warn_renamed(old, new, where, stacklevel)
        kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed_args(**renames: str) -> Callable[[F], F]:
    """Decorator: accept deprecated keyword names (``@renamed_args(ratio="sparsity")``) with a warning.

    A deprecated name whose new name has a default in the signature replaces that default; passing
    both is a TypeError.
    """

    def deco(fn: F) -> F:
        where = fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            take_renamed(kwargs, renames, where, stacklevel=4)
            return fn(*args, **kwargs)

        wrapper.__prunekit_renamed__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


def deprecated_alias(fn: F, old_name: str) -> F:
    """A function ``old_name`` that warns and calls ``fn`` (a renamed public function)."""

    @functools.wraps(fn)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old_name} is deprecated, use {fn.__name__} (the old name goes in the next release)",
                      PrunekitDeprecationWarning, stacklevel=2)
        return fn(*args, **kwargs)

    alias.__name__ = old_name
    alias.__qualname__ = old_name
    return alias  # type: ignore[return-value]
