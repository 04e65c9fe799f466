"""Read YAML and remember the line of every key, so an error can name the file, the line and the field."""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[Any, ...]


def load_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML ``text`` (safe types only); return the data and a map from each key's path
    (``("stages", 0, "sparsity")``) to its 1-based line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValueError(f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                k = key.value
                line = key.start_mark.line + 1
                if k in seen:  # YAML loaders keep the last value silently; a recipe must say one thing
                    field = ".".join(str(p) for p in path + (k,))
                    raise ValueError(f"line {line}: key {field!r} appears twice (first on line {seen[k]}); "
                                     "keep one")
                seen[k] = line
                lines[path + (k,)] = line
                walk(value, path + (k,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    data = yaml.safe_load(text)
    return data, lines


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of ``path`` or of its nearest parent that has one."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
