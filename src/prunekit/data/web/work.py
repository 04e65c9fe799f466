"""The resumable work folder of one ``dedup``/``density`` run: a ``prunekit.json`` marker holding the
fingerprint of the data and the settings; a folder whose fingerprint differs is the work of another run
and is started over; a folder prunekit did not write is refused."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ...core.atomic import MARKER, atomic_file, scratch_folder

WORK_KIND = "data-work"


class Work:
    """The resumable scratch folder of one run (see the module docstring)."""

    def __init__(self, work: str | os.PathLike | None, out: Path | None, fingerprint: dict[str, Any]) -> None:
        if work is None and out is not None:
            work = out.parent / f"{out.name}.work"
        self.scratch = work is None
        self.path = scratch_folder("prunekit-data-work") if work is None else Path(work).absolute()
        fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from the marker
        self.fingerprint = fingerprint
        self.created = self.scratch
        marker = self.path / MARKER
        if not self.scratch and self.path.exists():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                info = None
            if isinstance(info, dict) and info.get("kind") == WORK_KIND:
                if info.get("fingerprint") != fingerprint:
                    warnings.warn(f"{self.path} holds the work of a run with other data or settings; starting over",
                                  stacklevel=3)
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
                                           "fingerprint": fingerprint}))

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(exist_ok=True)
        return p

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
