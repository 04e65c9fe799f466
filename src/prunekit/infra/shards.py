"""The weight files of a model folder, each checked to stay inside that folder.

A Hugging Face folder names its shards in ``model.safetensors.index.json`` (or
``pytorch_model.bin.index.json``), and any entry could point anywhere: ``../outside.safetensors``,
``/home/me/file``, or a shard that is a symbolic link out of the folder. Every prunekit reader of a model
folder (merge, the model loader, the compressed-tensors reader, the sliced-model loader) takes its file
names from here, so no file outside the folder is ever read, or written in a copy's layout, on an
index's word. The one link allowed out is the Hugging Face hub cache's own layout
(``snapshots/<rev>/x -> ../../blobs/<hash>``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFETENSORS_INDEX = INDEXES[0]
SINGLE = "model.safetensors"


class FolderEscapeError(ValueError):
    """A file name (an index entry, a weight file, a side file) that leads out of its model folder."""


def _hub_blob(root: Path, target: Path) -> bool:
    """Whether ``target`` is a blob of the Hugging Face cache repository whose snapshot ``root`` is."""
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def inside(folder: str | os.PathLike, name: str, what: str = "file") -> Path:
    """``folder / name``, after checking that it stays inside ``folder``: a relative name without ``..``,
    and (following links) a file that resolves inside ``folder``. A :class:`FolderEscapeError` otherwise."""
    folder = Path(folder)
    if not isinstance(name, str) or not name:
        raise FolderEscapeError(f"{folder}: {what} {name!r} is not a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise FolderEscapeError(f"{folder}: {what} {name!r} leads out of the folder (an absolute path or '..'); "
                                "prunekit reads and writes only files inside a model folder. Fix or remove that entry")
    path = folder / name
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(path))
    if root not in target.parents and not _hub_blob(root, target):
        raise FolderEscapeError(f"{folder}: {what} {name!r} leads out of the folder (a link to {target}); "
                                "prunekit follows no link out of a model folder. Copy the file into the folder instead")
    return path


def index_entries(folder: str | os.PathLike, index: str = SAFETENSORS_INDEX) -> dict[str, str] | None:
    """The ``weight_map`` (tensor → file) of ``folder/index``, every file checked with :func:`inside`;
    None when the folder has no such index."""
    path = Path(folder) / index
    if not path.is_file():
        return None
    inside(folder, index, "index")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable JSON index ({exc}); write it again") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ValueError(f"{path} has no weight_map of tensor names to file names; write it again")
    for file in sorted(set(weight_map.values())):
        inside(folder, file, f"{index} entry")
    return weight_map


def check_model_folder(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose shard indexes or weight files lead out of it (see the module docstring);
    run before anything is read from the folder."""
    folder = Path(folder)
    for index in INDEXES:
        index_entries(folder, index)
    for entry in sorted(os.listdir(folder)) if folder.is_dir() else []:
        if entry.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
            inside(folder, entry, "weight file")


def safetensors_files(folder: str | os.PathLike, label: str | None = None) -> list[str]:
    """The safetensors files of a model folder, relative to it: those its index names, else
    ``model.safetensors``, else every ``*.safetensors``; each checked with :func:`inside`."""
    folder = Path(folder)
    check_model_folder(folder)
    weight_map = index_entries(folder)
    if weight_map is not None:
        return sorted(set(weight_map.values()))
    if (folder / SINGLE).is_file():
        return [SINGLE]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if not found:
        raise ValueError(f"{label or folder}: no safetensors weights in {folder} (expected {SINGLE} or "
                         f"{SAFETENSORS_INDEX})")
    return found
