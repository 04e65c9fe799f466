"""A small name → object registry, so methods, criteria, allocations, structured importances and data
strategies are referred to by strings, each with the typed config class (:mod:`prunekit.core.config`)
that holds its settings."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Mapping, TypeVar

if TYPE_CHECKING:
    from .config import Config

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (and, optionally, to their config classes); unknown names raise an error
    that lists the known ones.

    ``key`` is the field of a config dict that names the entry (``"method"`` for methods), so
    :meth:`parse_config` can turn ``{"method": "wanda", "sparsity": 0.5}`` into a ``WandaConfig``.
    """

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key or kind
        self._items: dict[str, T] = {}
        self._configs: dict[str, type[Config]] = {}

    def register(self, name: str, config: type[Config] | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (with its config class)."""

        def deco(obj: T) -> T:
            self.add(name, obj, config)
            return obj

        return deco

    def add(self, name: str, obj: T, config: type[Config] | None = None) -> None:
        """Register ``obj`` under ``name``; a name may be registered once."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        if config is not None:
            self._configs[name] = config

    def _unknown(self, name: object) -> ValueError:
        close = difflib.get_close_matches(name, self.names(), n=1) if isinstance(name, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ValueError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise a ValueError naming the known ones."""
        if not isinstance(name, str) or name not in self._items:
            raise self._unknown(name)
        return self._items[name]

    def config(self, name: str) -> type[Config]:
        """The config class registered for ``name``."""
        self.get(name)
        if name not in self._configs:
            raise ValueError(f"{self.kind} {name!r} has no config class")
        return self._configs[name]

    def parse_config(self, data: Mapping[str, Any] | Config, where: str | None = None, **fields: Any) -> Config:
        """The config object for ``data`` (a mapping naming the entry under :attr:`key`, or a config),
        with ``fields`` applied on top."""
        from .config import Config, ConfigError

        if isinstance(data, Config):
            return data.replace(**fields) if fields else data
        merged = {**dict(data), **fields}
        if self.key not in merged:
            raise ConfigError(f"{where + ': ' if where else ''}a {self.kind} config needs {self.key!r} "
                              f"(one of {', '.join(self.names())})")
        try:
            cls = self.config(merged[self.key])
        except ValueError as exc:
            raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None
        return cls.parse(merged, where=where)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
