"""The resumable work folder of one ``dedup``/``density`` run: a ``prunekit.json`` marker holding the
fingerprint of the data and the settings; a folder whose fingerprint differs is the work of another run
and is started over; a folder prunekit did not write is refused. The folder is locked while a run
uses it, so a second run on the same output fails at once instead of mixing its files in."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ...core.atomic import MARKER, atomic_file, scratch_folder
from ...core.fsops import OutputLock

WORK_KIND = "data-work"


class Work:
    """The resumable scratch folder of one run (see the module docstring); use it as a context
    manager (``with Work(...) as w``), which holds its lock."""

    def __init__(self, work: str | os.PathLike | None, out: Path | None, fingerprint: dict[str, Any]) -> None:
        if work is None and out is not None:
            work = out.parent / f"{out.name}.work"
        self.scratch = work is None
        self.path = scratch_folder("prunekit-data-work") if work is None else Path(work).absolute()
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from the marker
        self.created = self.scratch
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Work":
        if not self.scratch:
            if self.path.exists() and not self.path.is_dir():
                raise ValueError(f"work folder {self.path} is a file; choose another (work=, --work)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stack.enter_context(OutputLock(self.path))
        try:
            self._prepare()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _prepare(self) -> None:
        marker = self.path / MARKER
        if not self.scratch and self.path.exists():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                info = None
            if isinstance(info, dict) and info.get("kind") == WORK_KIND:
                if info.get("fingerprint") != self.fingerprint:
                    warnings.warn(f"{self.path} holds the work of a run with other data or settings; starting over",
                                  stacklevel=4)
                    shutil.rmtree(self.path)
            elif any(self.path.iterdir()):
                raise ValueError(f"work folder {self.path} holds files prunekit did not write; choose another "
                                 "(work=, --work)")
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created = True
        if not marker.exists():
            from ... import __version__

            with atomic_file(marker) as tmp:
                tmp.write_text(json.dumps({"prunekit_version": __version__, "kind": WORK_KIND,
                                           "fingerprint": self.fingerprint}))

    def sub(self, name: str) -> Path:
        """A subfolder (created if missing)."""
        p = self.path / name
        p.mkdir(exist_ok=True)
        return p

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
