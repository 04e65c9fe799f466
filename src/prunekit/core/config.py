"""Typed configs: one pydantic class per method (and per structured importance, data strategy, …).

A config holds the *settings* of a step — never data or models — so it serialises to and from JSON
and YAML exactly, and a recipe is a list of them. Unknown fields are errors that list the allowed
ones (with a "did you mean" when a name is close); wrong types and out-of-range values are errors
that name the field. Every config subclass names its registry key (``method``, ``importance``,
``strategy``, …) as a ``Literal`` field, so a dict says which class it is.

    class WandaConfig(Config):
        method: Literal["wanda"] = "wanda"
        sparsity: Sparsity | None = None
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config (or the keywords that build one) has an unknown field, a wrong type or a bad value.

    ``problems`` lists each one as ``(loc, message)``, ``loc`` being the field's path in the input
    (so a recipe can point at the line of a YAML file)."""

    def __init__(self, message: str, problems: list[tuple[tuple, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def _describe(err: dict[str, Any], cls: type[BaseModel]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        name = str(err["loc"][-1])
        if len(err["loc"]) > 1:
            return f"unknown option {name!r} in {'.'.join(str(p) for p in err['loc'][:-1])}"
        allowed = sorted(cls.model_fields)
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown option {name!r}{hint}; allowed: {', '.join(allowed)}"
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Type error, "):  # our own check_fraction messages, as raised
        if msg.startswith(prefix):
            return msg[len(prefix):]
    value = err.get("input")
    shown = "" if isinstance(value, Mapping) else f", got {value!r}"
    return f"{msg}{shown}"


def _with_loc(loc: tuple, message: str) -> str:
    """``message`` prefixed with its field unless the message names it already."""
    name = ".".join(str(p) for p in loc)
    return message if not name or message.startswith(name.split(".")[-1]) or message.startswith("unknown option") \
        else f"{name}: {message}"


class Config(BaseModel):
    """Base of every prunekit config: fields are checked on creation and on assignment; unknown
    fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              use_enum_values=True, protected_namespaces=())

    @classmethod
    def parse(cls: type[C], data: Mapping[str, Any] | None = None, *, where: str | None = None, **fields: Any) -> C:
        """Build the config from a mapping and/or keywords, turning pydantic's errors into one
        :class:`ConfigError` that names every bad field (prefixed with ``where``, e.g. a file and line)."""
        merged = {**dict(data or {}), **fields}
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            problems = [(tuple(e.get("loc", ())), _describe(e, cls)) for e in exc.errors()]
            text = "; ".join(_with_loc(loc, m) for loc, m in problems)
            raise ConfigError(f"{where + ': ' if where else ''}{cls.__name__}: {text}", problems) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``type(self).parse(self.to_dict())`` gives an equal config."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=False)

    def to_yaml(self) -> str:
        """The config as a YAML document."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """Parse a config from JSON text."""
        return cls.parse(json.loads(text))

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        """Parse a config from YAML text."""
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: a YAML mapping of fields was expected, got {type(data).__name__}")
        return cls.parse(data)

    def replace(self: C, **fields: Any) -> C:
        """A copy with ``fields`` changed (validated)."""
        return type(self).parse({**self.to_dict(), **fields})
