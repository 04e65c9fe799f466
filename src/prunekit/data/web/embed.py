"""``embed_shards``: Parquet shards of text (or of precomputed embeddings) → an embedding folder.

One output shard per input shard, written batch by batch into a temporary file and renamed into place
when complete, so memory is bounded by the batch and a killed run resumes at the first shard that is
not there yet (rows are neither lost nor written twice). The same per-shard function runs in this
process or, with ``engine="ray"``, in a pool of Ray Data actors that each load the encoder once.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...infra.atomic import MARKER, atomic_file, check_writable, is_prunekit_folder
from ...infra.fsops import OutputLock
from .engine import get_engine
from .sources import (Source, check_finite_rows, check_fits_dtype, inspect_sources, iter_texts, iter_vectors, resolve_shards,
                      scan_vectors)
from .store import (DTYPES, FILE_FORMATS, KIND, read_marker, remove_shard_files, shard_files, shard_name,
                    write_marker)

Encoder = Callable[[list[str]], np.ndarray]
CHUNK = 16  # encoder batches read at once from a text shard


@dataclass(frozen=True)
class EmbedTask:
    """Everything one worker needs to write one embedding shard (plain data, so Ray can ship it)."""

    index: int
    source: str
    rows: int
    offset: int
    column: str
    from_vectors: bool
    id_column: str | None
    folder: str
    dtype: str
    file_format: str
    batch_size: int
    dim: int


@dataclass
class EmbedReport:
    """What :func:`embed_shards` did: shards written now, shards found complete, rows, seconds."""

    out: str
    n: int
    dim: int
    shards: int
    written: int
    skipped: int
    seconds: float
    engine: str
    rows_written: int = 0

    @property
    def rows_per_second(self) -> float:
        """Rows embedded now per second of this call (model loading included)."""
        return self.rows_written / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**asdict(self), "rows_per_second": self.rows_per_second}

    def __str__(self) -> str:
        resumed = f", {self.skipped} already complete" if self.skipped else ""
        return (f"embedded {self.n} examples ({self.dim}-d) into {self.shards} shards in {self.out} "
                f"({self.written} written now{resumed}; {self.seconds:.1f} s, engine {self.engine})")


def _make_encoder(model: Any, batch_size: int, max_length: int) -> Encoder:
    if callable(model) and not isinstance(model, (str, os.PathLike)):
        return model
    from ..embed import TextEncoder

    return TextEncoder(model, batch_size=batch_size, max_length=max_length)


def _encode(encoder: Encoder, texts: list[str], where: str, start: int) -> np.ndarray:
    vec = np.asarray(encoder(texts), dtype=np.float32)
    if vec.ndim != 2 or len(vec) != len(texts):
        raise ValueError(f"the encoder returned shape {vec.shape} for {len(texts)} texts; it must return one "
                         "vector per text")
    check_finite_rows(vec, where, start)
    return vec


def embed_one(task: EmbedTask, encoder: Encoder | None) -> dict[str, Any]:
    """Write embedding shard ``task.index`` unless it is already complete; returns its summary."""
    folder = Path(task.folder)
    name = shard_name(task.index)
    files = shard_files(folder, name, task.file_format)
    if files[-1].exists():
        return {"index": task.index, "rows": task.rows, "skipped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    dtype = np.dtype(task.dtype)
    batches = _batches(task, encoder)
    index = np.arange(task.offset, task.offset + task.rows, dtype=np.int64)
    ids = None
    if task.id_column is not None:
        import pyarrow.parquet as pq

        ids = pq.read_table(task.source, columns=[task.id_column]).column(0).combine_chunks()
    if task.file_format == "npy":
        with atomic_file(files[0]) as tmp:
            np.save(tmp, index, allow_pickle=False)
        if ids is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            with atomic_file(folder / f"{name}.ids.parquet") as tmp:
                pq.write_table(pa.table({"index": index, "id": ids}), tmp)
        with atomic_file(files[1]) as tmp:  # written last: its presence marks the shard complete
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(task.rows, task.dim))
            filled = _fill(out, batches, task)
            out.flush()
            del out
            if filled != task.rows:
                raise ValueError(f"{task.source}: read {filled} rows but its metadata says {task.rows}; the file "
                                 "changed while it was being read")
    else:
        _write_parquet(files[0], batches, task, index, ids)
    return {"index": task.index, "rows": task.rows, "skipped": False, "seconds": time.perf_counter() - t0}


def _batches(task: EmbedTask, encoder: Encoder | None) -> Any:
    """float32 ``(rows, dim)`` batches of one input shard: read, or encoded from its texts."""
    if task.from_vectors:
        start = 0
        for vec in iter_vectors(task.source, task.column, task.batch_size):
            check_finite_rows(vec, task.source, start)  # checked up front too; the file may have changed since
            yield vec
            start += len(vec)
        return
    assert encoder is not None
    start = 0
    # The encoder gets CHUNK batches at a time, so that it can group texts of similar length (memory
    # stays bounded: CHUNK × batch_size texts and their vectors).
    for texts in iter_texts(task.source, task.column, task.batch_size * CHUNK):
        yield _encode(encoder, texts, task.source, start)
        start += len(texts)


def _check_width(vec: np.ndarray, task: EmbedTask, start: int) -> None:
    if vec.shape[1] != task.dim:
        raise ValueError(f"{task.source}: embeddings near row {start} are {vec.shape[1]}-dimensional, expected "
                         f"{task.dim}; every shard must come from the same encoder")


def _fill(out: np.ndarray, batches: Any, task: EmbedTask) -> int:
    start = 0
    for vec in batches:
        _check_width(vec, task, start)
        check_fits_dtype(vec, task.dtype, task.source, start)
        if start + len(vec) > task.rows:
            raise ValueError(f"{task.source}: holds more rows than its metadata says ({task.rows})")
        out[start:start + len(vec)] = vec.astype(out.dtype)
        start += len(vec)
    return start


def _write_parquet(path: Path, batches: Any, task: EmbedTask, index: np.ndarray, ids: Any) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    value_type = pa.float16() if task.dtype == "float16" else pa.float32()
    fields = [pa.field("index", pa.int64()), pa.field("embedding", pa.list_(value_type, task.dim))]
    if ids is not None:
        fields.append(pa.field("id", ids.type))
    schema = pa.schema(fields)
    start = 0
    with atomic_file(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for vec in batches:
                _check_width(vec, task, start)
                check_fits_dtype(vec, task.dtype, task.source, start)
                stop = start + len(vec)
                flat = pa.array(vec.astype(task.dtype).reshape(-1), type=value_type)
                cols = [pa.array(index[start:stop]), pa.FixedSizeListArray.from_arrays(flat, task.dim)]
                if ids is not None:
                    cols.append(ids.slice(start, len(vec)))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema))
                start = stop
            if start != task.rows:
                raise ValueError(f"{task.source}: read {start} rows but its metadata says {task.rows}; the file "
                                 "changed while it was being read")
            if start == 0:
                writer.write_table(schema.empty_table())
    return start


class _EmbedActor:
    """A Ray Data actor: loads the encoder once, then writes the shards it is given."""

    def __init__(self, model: Any, batch_size: int, max_length: int, needs_encoder: bool) -> None:
        self.encoder = _make_encoder(model, batch_size, max_length) if needs_encoder else None

    def __call__(self, task: EmbedTask) -> dict[str, Any]:
        return embed_one(task, self.encoder)


def _plan(sources: list[Source], column: str, embedding_column: str | None, id_column: str | None,
          model_name: str | None, dtype: str, file_format: str, dim: int, max_length: int) -> dict[str, Any]:
    return {"sources": [{"path": s.path, "rows": s.rows, "bytes": s.bytes} for s in sources],
            "column": embedding_column or column, "from_vectors": embedding_column is not None,
            "id_column": id_column, "model": model_name, "dtype": dtype, "file_format": file_format, "dim": dim,
            "max_length": None if embedding_column else max_length}


def _already_written(out: Path, sources: list[Source], column: str, file_format: str) -> tuple[set[int], int | None]:
    """Shards of an earlier run on the same inputs that are complete in ``out`` (they were checked when
    written), and that run's width; nothing when ``out`` holds anything else."""
    info = read_marker(out) if out.is_dir() else None
    plan = (info or {}).get("plan") or {}
    same = plan.get("sources") == [{"path": s.path, "rows": s.rows, "bytes": s.bytes} for s in sources] and \
        plan.get("column") == column and plan.get("from_vectors") and plan.get("file_format") == file_format
    if not same:
        return set(), None
    done = {i for i in range(len(sources)) if shard_files(out, shard_name(i), file_format)[-1].exists()}
    return done, plan.get("dim")


def _prepare_folder(out: Path, plan: dict[str, Any], overwrite: bool) -> bool:
    """Make ``out`` ready to receive the plan's shards; True when it resumes an earlier run."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; embeddings are written to a folder")
    if out.is_dir() and any(out.iterdir()):
        info = read_marker(out)
        if info is not None and info.get("plan") == plan:
            return True
        if info is None and not is_prunekit_folder(out):
            names = sorted(p.name for p in out.iterdir())[:3]
            raise ValueError(f"--out {out} holds files prunekit did not write ({', '.join(names)}, ...); it is never "
                             "written into, even with --overwrite. Choose an empty or new folder")
        if not overwrite:
            what = "embeddings of other inputs or settings" if info is not None else "another prunekit output"
            raise ValueError(f"--out {out} holds {what}; pass --overwrite (overwrite=True) to replace it, or "
                             "choose another folder")
        if info is not None:
            foreign = [p.name for p in out.iterdir() if not (p.name.startswith("part-") or p.name == MARKER)]
            if foreign:
                raise ValueError(f"--out {out} also holds files prunekit did not write ({', '.join(foreign[:3])}); "
                                 "remove them or choose another folder")
            remove_shard_files(out)
        else:
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return False


def embed_shards(texts: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 column: str = "text", model: Any = "minilm-l6", embedding_column: str | None = None,
                 id_column: str | None = None, batch_size: int = 64, max_length: int = 256,
                 dtype: str = "float16", file_format: str = "npy", engine: str = "local",
                 address: str | None = None, workers: int | None = None, overwrite: bool = False,
                 progress: bool = True) -> EmbedReport:
    """Embed the ``column`` texts of Parquet shards ``texts`` (files, a folder or a glob) into the
    embedding folder ``out``, one output shard per input shard.

    ``model``: ``"minilm-l6"`` (all-MiniLM-L6-v2, default), a Hugging Face encoder folder, or any
    callable mapping a list of texts to an ``(n, d)`` array. ``embedding_column``: take precomputed
    embeddings (a list of floats per row) instead of encoding texts. ``id_column``: keep the
    examples' own ids beside the global indices. ``dtype``: ``float16`` (default) or ``float32``;
    ``file_format``: ``npy`` (default) or ``parquet``. Run again with the same arguments after an
    interruption to finish; a folder holding other embeddings needs ``overwrite=True``.
    ``engine="ray"`` embeds on Ray (``address``: a cluster, e.g. ``"auto"``; else a local Ray with
    ``workers`` CPUs).
    """
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {', '.join(FILE_FORMATS)}, got {file_format!r}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    paths = resolve_shards(texts)
    from_vectors = embedding_column is not None
    sources, dim = inspect_sources(paths, embedding_column or column, "embedding" if from_vectors else "text",
                                   id_column)
    out_path = Path(out).absolute()
    check_writable(out_path)
    cwd, real = Path(os.path.realpath(os.getcwd())), Path(os.path.realpath(out_path))
    if real == cwd or real in cwd.parents:
        raise ValueError(f"--out {out} is the current folder or holds it; prunekit never writes embeddings into "
                         "(or replaces) it. Choose a new folder such as emb/")
    encoder: Encoder | None = None
    if from_vectors:
        model_name = None
        done, done_dim = _already_written(out_path, sources, embedding_column, file_format)  # type: ignore[arg-type]
        dim = dim if dim is not None else done_dim
        for i, s in enumerate(sources):  # widths and finiteness of every shard still to write, before writing
            if s.rows and i not in done:
                dim = scan_vectors(s, embedding_column, batch_size, dim, dtype)  # type: ignore[arg-type]
        if dim is None:
            raise ValueError("the input shards hold no rows")
    else:
        if callable(model) and not isinstance(model, (str, os.PathLike)):
            encoder = model
            model_name = f"callable:{getattr(model, '__qualname__', type(model).__qualname__)}"
            probe = next((s for s in sources if s.rows), None)
            if probe is None:
                raise ValueError("the input shards hold no rows")
            first = next(iter_texts(probe.path, column, 1))
            dim = _encode(encoder, first, probe.path, 0).shape[1]
        else:
            model_name = str(model)
            if engine == "local":
                encoder = _make_encoder(model, batch_size, max_length)
                dim = encoder.dim  # type: ignore[attr-defined]
            else:  # load once here to check the model and learn its width; the actors load their own copies
                dim = _make_encoder(model, 1, max_length).dim  # type: ignore[attr-defined]
    plan = _plan(sources, column, embedding_column, id_column, model_name, dtype, file_format, int(dim),
                 max_length)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runner = get_engine(engine, address=address, workers=workers, progress=progress)
    try:
        results = _embed_all(out_path, plan, overwrite, sources, embedding_column or column, from_vectors, id_column,
                             dtype, file_format, batch_size, int(dim), runner, encoder, model, max_length)
    finally:
        runner.close()
    written = sum(not r["skipped"] for r in results)
    return EmbedReport(str(out_path), sum(s.rows for s in sources), int(dim), len(sources), written,
                       len(sources) - written, time.perf_counter() - t0, runner.name,
                       rows_written=sum(r["rows"] for r in results if not r["skipped"]))


def _embed_all(out_path: Path, plan: dict[str, Any], overwrite: bool, sources: list[Source], column: str,
               from_vectors: bool, id_column: str | None, dtype: str, file_format: str, batch_size: int, dim: int,
               runner: Any, encoder: Encoder | None, model: Any, max_length: int) -> list[dict[str, Any]]:
    """Under the folder's lock: prepare it, write the plan, write every missing shard, mark it complete."""
    with OutputLock(out_path):
        _prepare_folder(out_path, plan, overwrite)
        shards = [{"name": shard_name(i), "rows": s.rows, "offset": s.offset, "source": s.path}
                  for i, s in enumerate(sources)]
        marker = {"kind": KIND, "format_version": 1, "plan": plan, "n": sum(s.rows for s in sources), "dim": dim,
                  "dtype": dtype, "file_format": file_format, "shards": shards}
        write_marker(out_path, {**marker, "complete": False})
        tasks = [EmbedTask(i, s.path, s.rows, s.offset, column, from_vectors, id_column, str(out_path), dtype,
                           file_format, batch_size, dim) for i, s in enumerate(sources)]
        if runner.name == "local":
            results = runner.map(embed_one, tasks, desc="embed shards", extra=(encoder,))
        else:
            results = runner.map_actors(_EmbedActor, tasks, desc="embed shards",
                                        init=(model, batch_size, max_length, not from_vectors))
        write_marker(out_path, {**marker, "complete": True})
    return results
