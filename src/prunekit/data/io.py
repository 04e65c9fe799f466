"""Reading and writing one array per file, as ``.npy`` or ``.parquet`` (one column), atomically:
the file appears complete under its name or not at all (``infra.atomic.atomic_file``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..infra.atomic import atomic_file

FORMATS = (".npy", ".parquet")


def _format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown file type {suffix!r}; use a .npy or .parquet file")
    return suffix


def load_array(path: str | os.PathLike, column: str | None = None) -> np.ndarray:
    """A 1-D array (or 2-D for .npy embeddings) from ``path``; a Parquet file must hold one column,
    or name the one to read with ``column``."""
    fmt = _format(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == ".npy":
        return np.load(path, allow_pickle=False)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if column is None:
        if table.num_columns != 1:
            raise ValueError(f"{path} has columns {table.column_names}; name the one to read")
        column = table.column_names[0]
    if column not in table.column_names:
        raise ValueError(f"{path} has no column {column!r}; it has {table.column_names}")
    return table.column(column).to_numpy()


def save_array(path: str | os.PathLike, array: np.ndarray, column: str = "value") -> Path:
    """Write a 1-D ``array`` to ``path`` (.npy, or .parquet with one column named ``column``)
    through a temporary file renamed into place; returns the path."""
    fmt = _format(path)
    arr = np.asarray(array)
    if arr.ndim != 1:
        raise ValueError(f"can only save a 1-D array, got shape {arr.shape}")
    target = Path(path)
    if not target.parent.exists():
        raise FileNotFoundError(f"{target.parent}: no such folder to write {target.name} into")
    with atomic_file(target) as tmp:  # unique temporary beside it, umask permissions, renamed into place
        if fmt == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({column: arr}), tmp)
    return target


_MAGIC = {".npy": b"\x93NUMPY", ".parquet": b"PAR1"}


def _is_array_file(path: Path) -> bool:
    """Whether ``path`` starts like the .npy/.parquet file its suffix names (what prunekit would have written)."""
    magic = _MAGIC.get(path.suffix.lower())
    try:
        with open(path, "rb") as f:
            return magic is not None and f.read(len(magic)) == magic
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Fail now, before any work, when ``path`` cannot or may not be written: not .npy/.parquet, a
    folder that does not exist or cannot be written, an existing file without ``overwrite``."""
    out = Path(path).absolute()
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{flag} {path}: use a .npy or .parquet file")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: folder {out.parent} does not exist")
    if out.is_dir():
        raise ValueError(f"{flag} {path} is a folder; name a .npy or .parquet file")
    if out.exists() and not overwrite:
        raise ValueError(f"{flag} {path} exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not _is_array_file(out):
        raise ValueError(f"{flag} {path} exists and is not a {out.suffix} file (prunekit writes only .npy/.parquet "
                         "arrays); it is never replaced, even with --overwrite. Choose another file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".prunekit-probe-", dir=out.parent)
    except OSError as exc:
        raise ValueError(f"{flag} {path} cannot be written: {out.parent} is not writable ({exc.strerror}); "
                         "choose a folder you can write") from None
    os.close(fd)
    os.unlink(probe)
    return out
