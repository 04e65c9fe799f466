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

from ...infra.atomic import MARKER, atomic_file, scratch_folder
from ...infra.fsops import OutputLock

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
        self.made_folder = self.scratch
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Work":
        if not self.scratch:
            if self.path.exists() and not self.path.is_dir():
                raise ValueError(f"work folder {self.path} is a file; choose another (work=, --work)")
            cwd = Path(os.path.realpath(os.getcwd()))
            real = Path(os.path.realpath(self.path))
            if real == cwd or real in cwd.parents:
                raise ValueError(f"work folder {self.path} is the current folder or holds it; prunekit keeps its "
                                 "work files in a folder of their own. Choose a new one (work=, --work), e.g. OUT.work")
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
        made = self.created
        if not self.scratch and self.path.exists():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                info = None
            if isinstance(info, dict) and info.get("kind") == WORK_KIND:
                made = bool(info.get("made_folder", False))
                if info.get("fingerprint") != self.fingerprint:
                    warnings.warn(f"{self.path} holds the work of a run with other data or settings; starting over",
                                  stacklevel=4)
                    self._clear()
            elif any(self.path.iterdir()):
                raise ValueError(f"work folder {self.path} holds files prunekit did not write; choose another "
                                 "(work=, --work)")
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created = made = True
        self.made_folder = made
        if not marker.exists():
            from ... import __version__

            with atomic_file(marker) as tmp:
                tmp.write_text(json.dumps({"prunekit_version": __version__, "kind": WORK_KIND,
                                           "fingerprint": self.fingerprint, "made_folder": made}))

    def sub(self, name: str) -> Path:
        """A subfolder (created if missing)."""
        p = self.path / name
        p.mkdir(exist_ok=True)
        return p

    def _clear(self) -> None:
        """Delete everything inside the folder (all of it prunekit's: a work folder holds nothing else)."""
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def remove(self) -> None:
        """Delete what prunekit made: the folder's contents, and the folder itself if prunekit created it."""
        if not self.path.is_dir():
            return
        self._clear()
        if self.made_folder:
            with contextlib.suppress(OSError):
                self.path.rmdir()
