"""``prunekit.json``: the record prunekit leaves in every folder it writes (what was done, with what, the
figures), and the marker that lets ``--overwrite`` replace that folder later. One writer for all of them:
``prunekit prune``, ``prunekit merge`` and ``export``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .atomic import MARKER, atomic_file


def write_meta(folder: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``folder/prunekit.json`` atomically: ``prunekit_version`` first, then ``meta`` (JSON, indented;
    values JSON cannot hold are written as text). Returns the file's path."""
    from .. import __version__

    data = {"prunekit_version": __version__, **{k: v for k, v in meta.items() if k != "prunekit_version"}}
    target = Path(folder) / MARKER
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return target


def read_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``prunekit.json`` of ``folder``, or None when it has none."""
    p = Path(folder) / MARKER
    return json.loads(p.read_text()) if p.is_file() else None
