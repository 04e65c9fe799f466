"""The embedding folder ``prunekit data embed`` writes and ``dedup``/``density`` read.

    emb/prunekit.json          what was embedded (sources, column, model, dtype, width), shard table, complete?
    emb/part-00000.npy         (rows, dim) float16/float32 embeddings of input shard 0
    emb/part-00000.index.npy   their global example indices (row offset of the shard + row)
    emb/part-00000.parquet     instead of the two .npy files with ``file_format="parquet"``:
                               columns ``index`` (int64), ``embedding`` (fixed-size list), ``id`` (optional)

Example *k* of the data set is row *k* of the input shards taken in order, so the indices a selection
writes are the ones ``prunekit data select`` writes and the samplers take. Every file is written to a
temporary name and renamed into place (``infra.atomic``), so a shard is either complete or absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...infra.atomic import MARKER, atomic_file

KIND = "embeddings"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
FILE_FORMATS = ("npy", "parquet")


def shard_name(i: int) -> str:
    """The file stem of embedding shard ``i``."""
    return f"part-{i:05d}"


def shard_files(folder: Path, name: str, file_format: str) -> list[Path]:
    """The files of one shard, the last one being the one whose presence marks the shard complete."""
    if file_format == "npy":
        return [folder / f"{name}.index.npy", folder / f"{name}.npy"]
    return [folder / f"{name}.parquet"]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """``prunekit.json`` of ``folder`` when it is an embedding folder prunekit wrote, else None."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == KIND else None


def write_marker(folder: Path, data: dict[str, Any]) -> None:
    """Write ``prunekit.json`` atomically."""
    from ... import __version__

    with atomic_file(folder / MARKER) as tmp:
        tmp.write_text(json.dumps({"prunekit_version": __version__, **data}, indent=1))


@dataclass(frozen=True)
class Shard:
    """One embedding shard: its file stem, rows and first global index."""

    name: str
    rows: int
    offset: int


class EmbeddingStore:
    """Read access to an embedding folder (or, for small data, an in-memory ``(N, d)`` array)."""

    def __init__(self, folder: Path | None, shards: list[Shard], dim: int, dtype: str, file_format: str,
                 array: np.ndarray | None = None, info: dict[str, Any] | None = None) -> None:
        self.folder, self.shards, self.dim, self.dtype, self.file_format = folder, shards, dim, dtype, file_format
        self.array = array
        self.info = info or {}
        self.n = sum(s.rows for s in shards)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, source: Any) -> "EmbeddingStore":
        """An embedding folder written by :func:`prunekit.data.embed_shards`, or an ``(N, d)`` array
        (a NumPy array, or a ``.npy`` file holding one)."""
        if isinstance(source, np.ndarray):
            return cls.from_array(source)
        path = Path(source)
        if path.is_file() and path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.dtype.kind != "f":
                raise ValueError(f"{path} must hold a 2-D float array (N examples × d), got {arr.dtype} {arr.shape}")
            return cls(path, [Shard("array", len(arr), 0)], arr.shape[1], str(arr.dtype), "npy-file")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such embedding folder (write one with `prunekit data embed`)")
        if not path.is_dir():
            raise ValueError(f"{path}: expected an embedding folder (from `prunekit data embed`) or an (N, d) .npy")
        info = read_marker(path)
        if info is None:
            raise ValueError(f"{path} is not an embedding folder prunekit wrote (no {MARKER} of kind "
                             f"{KIND!r}); write one with `prunekit data embed --out {path}`")
        shards = [Shard(s["name"], int(s["rows"]), int(s["offset"])) for s in info["shards"]]
        missing = [s.name for s in shards if not shard_files(path, s.name, info["file_format"])[-1].exists()]
        if not info.get("complete") or missing:
            done = len(shards) - len(missing)
            raise ValueError(f"{path} is incomplete: {done} of {len(shards)} shards are written. Run the same "
                             "`prunekit data embed` again to finish it (it resumes where it stopped)")
        return cls(path, shards, int(info["dim"]), info["dtype"], info["file_format"], info=info)

    @classmethod
    def from_array(cls, array: np.ndarray, where: str = "embeddings") -> "EmbeddingStore":
        """One in-memory shard holding ``array``."""
        if array.ndim != 2:
            raise ValueError(f"{where} must be a 2-D array (N examples × d), got shape {array.shape}")
        if array.dtype.kind != "f":
            raise ValueError(f"{where} must hold floats, got dtype {array.dtype}")
        return cls(None, [Shard("array", len(array), 0)], array.shape[1], str(array.dtype), "array", array=array)

    # ------------------------------------------------------------------ reading
    def describe(self) -> dict[str, Any]:
        """What identifies this data for a work folder's fingerprint."""
        out: dict[str, Any] = {"path": str(self.folder.resolve()) if self.folder else None, "n": self.n,
                               "dim": self.dim, "dtype": self.dtype, "shards": [(s.name, s.rows) for s in self.shards]}
        if self.array is not None:  # in memory: the content itself
            import hashlib

            out["sha1"] = hashlib.sha1(np.ascontiguousarray(self.array).tobytes()).hexdigest()
        elif self.file_format == "npy-file":
            st = self.folder.stat()  # type: ignore[union-attr]
            out["file"] = (st.st_size, st.st_mtime_ns)
        else:  # the embed run that wrote the folder last (its marker is rewritten by every run)
            out["plan"] = self.info.get("plan")
            out["written"] = (self.folder / MARKER).stat().st_mtime_ns  # type: ignore[operator]
        return out

    def rows(self, i: int) -> np.ndarray:
        """Shard ``i``'s embeddings as stored (a read-only memory map for ``.npy`` shards)."""
        shard = self.shards[i]
        if self.array is not None:
            return self.array
        assert self.folder is not None
        if self.file_format == "npy-file":
            return np.load(self.folder, mmap_mode="r", allow_pickle=False)
        if self.file_format == "npy":
            arr = np.load(self.folder / f"{shard.name}.npy", mmap_mode="r", allow_pickle=False)
        else:
            import pyarrow.parquet as pq

            col = pq.read_table(self.folder / f"{shard.name}.parquet", columns=["embedding"]).column(0)
            arr = col.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(shard.rows, self.dim)
        if arr.shape != (shard.rows, self.dim):
            raise ValueError(f"{self.folder}/{shard.name}: holds {arr.shape} embeddings, the folder's table says "
                             f"({shard.rows}, {self.dim}); the folder is damaged — embed again with --overwrite")
        return arr

    def batches(self, i: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 batch)`` of shard ``i``, ``batch_size`` rows at a time."""
        shard = self.shards[i]
        if self.array is None and self.file_format == "parquet":
            import pyarrow.parquet as pq

            start = 0
            pf = pq.ParquetFile(self.folder / f"{shard.name}.parquet")  # type: ignore[operator]
            for batch in pf.iter_batches(batch_size=batch_size, columns=["embedding"]):
                arr = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(len(batch), self.dim)
                yield start, arr.astype(np.float32)
                start += len(batch)
            return
        arr = self.rows(i)
        for start in range(0, shard.rows, batch_size):
            yield start, np.asarray(arr[start:start + batch_size], dtype=np.float32)

    def take(self, i: int, local_rows: np.ndarray) -> np.ndarray:
        """Rows ``local_rows`` (sorted) of shard ``i`` as float32 (a Parquet shard is read whole)."""
        return np.asarray(self.rows(i)[local_rows], dtype=np.float32)


def normalize(x: np.ndarray, where: str = "embeddings", start: int | np.ndarray = 0) -> np.ndarray:
    """Rows of ``x`` (float32) scaled to unit length; NaN/inf or all-zero rows are errors naming the
    examples (``start`` + row, or ``start[row]`` when ``start`` is the rows' example indices)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norms)

    def examples(mask: np.ndarray) -> list[int]:
        pos = np.flatnonzero(mask)[:5]
        return (start[pos] if isinstance(start, np.ndarray) else start + pos).tolist()

    if bad.any():
        rows = examples(bad)
        raise ValueError(f"{where}: {int(bad.sum())} embeddings hold NaN or infinite values (first at examples "
                         f"{rows}); fix or drop those examples, then embed again")
    zero = norms == 0
    if zero.any():
        rows = examples(zero)
        raise ValueError(f"{where}: {int(zero.sum())} embeddings are all zeros (first at examples {rows}); "
                         "a zero vector has no direction to compare")
    return x / norms[:, None]


def folder_bytes(folder: Path) -> int:
    """Total size of the files directly in ``folder``."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def remove_shard_files(folder: Path) -> None:
    """Delete an embedding folder's own files (``part-*`` and the marker), nothing else."""
    for p in folder.iterdir():
        if p.is_file() and (p.name.startswith("part-") or p.name == MARKER):
            os.unlink(p)
