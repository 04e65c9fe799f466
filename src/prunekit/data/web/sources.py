"""Input shards: Parquet files holding a text column (or a precomputed embedding column), read in
batches with pyarrow so that memory stays bounded by the batch, never by the shard or the data set.

Every check that needs only the files' metadata (a file that is missing or not Parquet, a missing
column, a column of the wrong type, nulls in the text, embedding widths that differ) runs in
:func:`inspect_sources` before anything is written.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

_GLOB_CHARS = set("*?[")


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The Parquet files named by ``spec``: a file, a folder (its ``*.parquet``, sorted), a glob
    (sorted matches), or a list of any of these (kept in the order given)."""
    if isinstance(spec, (str, os.PathLike)):
        spec = [spec]
    out: list[Path] = []
    for item in spec:
        s = os.fspath(item)
        if _GLOB_CHARS & set(s):
            matches = sorted(glob.glob(s))
            if not matches:
                raise FileNotFoundError(f"{s}: no file matches this pattern")
            out += [Path(m) for m in matches]
        elif Path(s).is_dir():
            files = sorted(Path(s).glob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"{s}: the folder holds no .parquet files")
            out += files
        else:
            out.append(Path(s))
    if not out:
        raise ValueError("no input shards given")
    seen: set[Path] = set()
    for p in out:
        rp = p.resolve()
        if rp in seen:
            raise ValueError(f"{p} is named twice; each shard may appear once")
        seen.add(rp)
    return out


@dataclass(frozen=True)
class Source:
    """One input shard: its path, row count, first global row index and size in bytes."""

    path: str
    rows: int
    offset: int
    bytes: int


def _list_dim(field_type) -> tuple[bool, int | None]:
    """(is a list of floats, fixed width or None) of an Arrow type."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(field_type):
        return pa.types.is_floating(field_type.value_type), field_type.list_size
    if pa.types.is_list(field_type) or pa.types.is_large_list(field_type):
        return pa.types.is_floating(field_type.value_type), None
    return False, None


def inspect_sources(paths: Sequence[Path], column: str, kind: str = "text",
                    id_column: str | None = None) -> tuple[list[Source], int | None]:
    """Check every shard from its Parquet metadata and return the shards (with global row offsets) and,
    for ``kind="embedding"``, the width when the schema fixes it. Raises before anything is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources: list[Source] = []
    offset = 0
    dim: int | None = None
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            meta = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ValueError(f"{path} is not a readable Parquet file ({exc})") from None
        schema = meta.schema_arrow
        for name in (column, id_column):
            if name is not None and name not in schema.names:
                raise ValueError(f"{path} has no column {name!r}; it has {schema.names}. "
                                 f"Name the right one with --column/--embedding-column/--id-column")
        field_type = schema.field(column).type
        if kind == "text":
            is_dict_str = pa.types.is_dictionary(field_type) and pa.types.is_string(field_type.value_type)
            if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type) or is_dict_str):
                raise ValueError(f"{path}: column {column!r} holds {field_type}, not text; for precomputed "
                                 "embeddings pass it as the embedding column")
            nulls = _null_count(meta, column)
            if nulls:
                raise ValueError(f"{path}: column {column!r} has {nulls} null texts; fill or drop them first")
        else:
            is_floats, width = _list_dim(field_type)
            if not is_floats:
                raise ValueError(f"{path}: column {column!r} holds {field_type}; embeddings must be a list of "
                                 "floats per row")
            if width is not None:
                if dim is not None and width != dim:
                    raise ValueError(f"{path}: embeddings are {width}-dimensional but earlier shards' are {dim}; "
                                     "every shard must come from the same encoder")
                dim = width
        rows = meta.metadata.num_rows
        sources.append(Source(str(path.resolve()), rows, offset, path.stat().st_size))
        offset += rows
    return sources, dim


def _null_count(meta, column: str) -> int:
    """Nulls in ``column`` from the row-group statistics (0 where a writer left no statistics;
    those are caught while reading)."""
    idx = meta.schema_arrow.get_field_index(column)
    total = 0
    for g in range(meta.metadata.num_row_groups):
        col = meta.metadata.row_group(g).column(idx)
        if col.statistics is not None and col.statistics.has_null_count:
            total += col.statistics.null_count
    return total


def iter_texts(path: str, column: str, batch_size: int) -> Iterator[list[str]]:
    """The texts of one shard, ``batch_size`` at a time."""
    import pyarrow.parquet as pq

    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=[column]):
        col = batch.column(0)
        if col.null_count:
            raise ValueError(f"{path}: column {column!r} has a null text near row {start}; fill or drop it first")
        yield col.to_pylist()
        start += len(col)


def iter_vectors(path: str, column: str, batch_size: int) -> Iterator[np.ndarray]:
    """The embeddings of one shard as float32 ``(rows, dim)`` arrays, ``batch_size`` rows at a time;
    a ragged batch (rows of different widths) or a null row is an error."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=[column]):
        col = batch.column(0)
        if col.null_count:
            raise ValueError(f"{path}: column {column!r} has a null embedding near row {start}")
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
            values = col.flatten()
        else:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths.min() != lengths.max()):
                bad = int(np.flatnonzero(lengths != lengths[0])[0])
                raise ValueError(f"{path}: row {start + bad} of column {column!r} has {lengths[bad]} values but "
                                 f"row {start} has {lengths[0]}; every embedding must have the same width")
            width = int(lengths[0]) if len(lengths) else 0
            values = col.flatten()
        arr = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        yield arr.reshape(len(col), width)
        start += len(col)


def scan_vectors(source: Source, column: str, batch_size: int, dim: int | None, dtype: str | None = None) -> int:
    """Read one shard's embedding column through once: its width (which must equal ``dim`` when
    given), that every value is finite and (with ``dtype``) that it fits that dtype. Returns the width."""
    width = dim
    start = 0
    for arr in iter_vectors(source.path, column, batch_size):
        if width is None:
            width = arr.shape[1]
        if arr.shape[1] != width:
            raise ValueError(f"{source.path}: embeddings are {arr.shape[1]}-dimensional but earlier ones are "
                             f"{width}; every shard must come from the same encoder")
        check_finite_rows(arr, f"{source.path}", start)
        if dtype is not None:
            check_fits_dtype(arr, dtype, f"{source.path}", start)
        start += len(arr)
    if width is None:
        raise ValueError(f"{source.path}: the shard has no rows to learn the embedding width from")
    return width


def check_finite_rows(arr: np.ndarray, where: str, start: int = 0) -> None:
    """Raise when a row of ``arr`` holds NaN or inf, naming the first rows."""
    finite = np.isfinite(arr).all(axis=1) if arr.size else np.ones(len(arr), dtype=bool)
    if not finite.all():
        bad = (start + np.flatnonzero(~finite)[:5]).tolist()
        raise ValueError(f"{where}: {int((~finite).sum())} embeddings hold NaN or infinite values "
                         f"(first at rows {bad}); fix or drop those examples")


FLOAT16_MAX = 65504.0  # the largest finite float16; anything larger is stored as inf


def check_fits_dtype(arr: np.ndarray, dtype: str, where: str, start: int = 0) -> None:
    """Raise when ``dtype`` is float16 and a row of ``arr`` holds a value beyond ±65504 (float16 would store
    it as inf), naming the shard and the first rows."""
    if np.dtype(dtype) != np.float16 or not arr.size:
        return
    big = (np.abs(arr) > FLOAT16_MAX).any(axis=1)
    if big.any():
        rows = (start + np.flatnonzero(big)[:5]).tolist()
        raise ValueError(f"{where}: {int(big.sum())} embeddings hold values beyond float16's range ±65504 "
                         f"(first at rows {rows}, largest |x| = {float(np.abs(arr).max()):.4g}); float16 would store "
                         "them as inf. Write float32 (dtype='float32', --dtype float32), or normalise the embeddings")
