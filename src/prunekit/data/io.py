"""Reading and writing one array per file, as ``.npy`` or ``.parquet`` (one column), atomically:
the file appears complete under its name or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_file

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
