"""``dedup`` (SemDeDup) and ``density`` (DBP) over an embedding folder, streamed, on one process or Ray.

Both run: cheap checks → k-means on a sample (in this process, so every engine gets the same
centroids) → assignment, one task per shard, writing rows grouped by partition into a work folder →
one task per partition (SemDeDup per cluster; DBP's budgets are computed here from the per-cluster
statistics the assignment returned) → the kept indices, sorted, in the format ``prunekit data
select`` writes. The work folder makes a killed run resumable (finished shards and partitions are
kept); it is removed after success (``keep_work=True`` keeps it) and after a failure of this run's
own making (bad data), so nothing half-written is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...infra.atomic import atomic_file, check_distinct
from ..budgets import dbp_budgets
from ..checks import budget
from ..io import check_output_file, load_array
from .cluster import AssignTask, assign_shard, train_centroids, training_sample
from .configs import ClusteringConfig, DBPConfig, SemDeDupConfig
from .dbp import DensityTask, complexity, density_partition
from .engine import get_engine
from .reports import DedupReport, DensityReport
from .semdedup import DedupTask, dedup_partition
from .store import EmbeddingStore
from .work import Work


# ------------------------------------------------------------------------------------------- checks
def _check_out(path: str | os.PathLike | None, overwrite: bool, what: str = "--out") -> Path | None:
    return None if path is None else check_output_file(path, overwrite, what)


def _check_paths(out: Any, pairs_out: Any, work: Any, emb: Any, subset: Any) -> None:
    """Two outputs with one path (or one inside the other: removing the work folder would delete an output
    in it), or an output over an input, are errors before any work."""
    def path(x: Any) -> Any:
        return x if isinstance(x, (str, os.PathLike)) else None

    if work is None and path(out) is not None:
        work = f"{os.fspath(out)}.work"
    check_distinct({"--out": path(out), "--pairs-out": path(pairs_out), "--work": path(work)},
                   {"--emb": path(emb), "--subset": path(subset)})


def _subset(subset: Any, store: EmbeddingStore) -> list[np.ndarray] | None:
    """The rows to consider, split per shard as local row numbers (None: all)."""
    if subset is None:
        return None
    idx = load_array(subset) if isinstance(subset, (str, os.PathLike)) else np.asarray(subset)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"subset must be a 1-D array of example indices (as `prunekit data select` writes), "
                         f"got shape {idx.shape}, dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= store.n):
        raise ValueError(f"subset holds indices outside [0, {store.n}), the examples of the embeddings")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("subset holds duplicate indices")
    idx = np.sort(idx)
    out = []
    for sh in store.shards:
        lo, hi = np.searchsorted(idx, [sh.offset, sh.offset + sh.rows])
        out.append(idx[lo:hi] - sh.offset)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------- clustering
@dataclass
class _Clusters:
    centroids: np.ndarray
    sizes: np.ndarray
    dist_sum: np.ndarray
    partitions: int
    assign_folder: Path
    n: int


def _cluster(store: EmbeddingStore, cfg: ClusteringConfig, subset: list[np.ndarray] | None, runner: Any,
             work: Work, with_embeddings: bool, say: Any) -> _Clusters:
    """Centroids (trained here, or the killed run's), then assignment over every shard on ``runner``."""
    n = int(sum(len(s) for s in subset)) if subset is not None else store.n
    k = cfg.n_clusters
    partitions = max(1, min(k, -(-n // cfg.partition_rows)))
    cpath = work.path / "centroids.npy"
    if cpath.exists():
        centroids = np.load(cpath)
    else:
        m = cfg.sample_size(n)
        say(f"k-means: {k} clusters trained on {m:,} of {n:,} examples")
        centroids = train_centroids(training_sample(store, subset, m, cfg.seed), k, cfg.niter, cfg.seed)
        with atomic_file(cpath) as tmp:
            np.save(tmp, centroids, allow_pickle=False)
    folder = work.sub("assign")
    tasks = [AssignTask(i, str(folder), partitions, with_embeddings, cfg.batch_size,
                        None if subset is None else subset[i]) for i in range(len(store.shards))]
    results = runner.map(assign_shard, tasks, desc="assign clusters", extra=(store, centroids))
    sizes = np.zeros(k, dtype=np.int64)
    dist_sum = np.zeros(k, dtype=np.float64)
    for r in results:  # summed in shard order on every engine
        sizes += r["sizes"]
        dist_sum += r["dist_sum"]
    return _Clusters(centroids, sizes, dist_sum, partitions, folder, n)


def _prepare(emb: Any, cfg: ClusteringConfig, out: Any, overwrite: bool, subset: Any, engine: str,
             with_embeddings: bool) -> tuple:
    """Every check that needs no pass over the data, and the fingerprint of the run's work folder."""
    store = EmbeddingStore.open(emb)
    out_path = _check_out(out, overwrite)
    if engine == "ray" and store.array is not None:
        raise ValueError("engine='ray' reads the embeddings from files: pass an embedding folder or a .npy file")
    parts = _subset(subset, store)
    n = int(sum(len(s) for s in parts)) if parts is not None else store.n
    if n < cfg.n_clusters:
        raise ValueError(f"{n} examples cannot form {cfg.n_clusters} clusters; use at most {n} clusters "
                         "(a few hundred examples per cluster is typical)")
    subset_digest = None if parts is None else hashlib.sha1(b"".join(p.tobytes() for p in parts)).hexdigest()
    fingerprint = {"store": store.describe(), "clustering": cfg.model_dump(include=set(ClusteringConfig.model_fields)),
                   "with_embeddings": with_embeddings, "subset": subset_digest}
    return store, out_path, parts, fingerprint


def _write_indices(path: Path, kept: np.ndarray, chunk: int = 1 << 22) -> None:
    """Write the indices where ``kept`` is True, ascending, in the format ``select`` writes (column
    ``index``), a chunk at a time."""
    total = int(kept.sum())
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".npy":
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(total,))
            at = 0
            for a in range(0, len(kept), chunk):
                idx = np.flatnonzero(kept[a:a + chunk]) + a
                out[at:at + len(idx)] = idx
                at += len(idx)
            out.flush()
            del out
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([pa.field("index", pa.int64())])
            with pq.ParquetWriter(tmp, schema) as writer:
                for a in range(0, max(len(kept), 1), chunk):
                    idx = np.flatnonzero(kept[a:a + chunk]) + a
                    writer.write_table(pa.table({"index": idx.astype(np.int64)}, schema=schema))


def _write_pairs(path: Path, parts: list[str]) -> None:
    """The removed examples of every partition, each with the earlier example it duplicates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("removed", pa.int64()), ("duplicate_of", pa.int64()), ("similarity", pa.float32())])
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            with np.load(part) as z:
                writer.write_table(pa.table({"removed": z["removed"], "duplicate_of": z["duplicate_of"],
                                             "similarity": z["similarity"]}, schema=schema))


def _config(cls: type, config: Any, fields: dict[str, Any]) -> Any:
    given = {k: v for k, v in fields.items() if v is not None}
    if config is None:
        return cls.parse(given)
    if isinstance(config, Mapping):
        return cls.parse({**config, **given})
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__} (or its dict), got {type(config).__name__}")
    return config.replace(**given) if given else config


def _run(fn: Any, work: Work, keep_work: bool) -> Any:
    """Run ``fn(work)`` holding the work folder; remove it after success (unless kept) and after a
    bad-data error of a run that created it."""
    with work:
        try:
            result = fn(work)
        except (ValueError, FileNotFoundError):
            if work.created:
                work.remove()
            raise
        if not keep_work:
            work.remove()
    return result


# ------------------------------------------------------------------------------------------ dedup
def dedup(emb: Any, config: SemDeDupConfig | Mapping[str, Any] | None = None, *, n_clusters: int | None = None,
          eps: float | None = None, prefer: str | None = None, sample: int | None = None, niter: int | None = None,
          seed: int | None = None, batch_size: int | None = None, partition_rows: int | None = None,
          out: str | os.PathLike | None = None, pairs_out: str | os.PathLike | None = None, subset: Any = None,
          engine: str = "local", address: str | None = None, workers: int | None = None,
          work: str | os.PathLike | None = None, keep_work: bool = False, overwrite: bool = False,
          progress: bool = True, say: Any = None) -> DedupReport:
    """SemDeDup over the embeddings ``emb`` (an embedding folder, an ``(N, d)`` array or ``.npy``):
    k-means with ``n_clusters``, then within each cluster drop an example whose cosine similarity to
    an earlier one exceeds 1 − ``eps`` (see :mod:`prunekit.data.web.semdedup` for the exact rule).

    Settings come as keywords or a :class:`SemDeDupConfig` (the same call). ``out``: write the kept
    indices (.npy/.parquet, column ``index``, as ``prunekit data select`` does); without it they are
    in the report's ``indices``. ``pairs_out``: a Parquet of the removed examples with the one each
    duplicates and their similarity. ``subset``: consider only these example indices (a file or
    array). ``engine="ray"`` runs assignment and the per-cluster work on Ray (``address``, ``workers``)
    with results identical to ``engine="local"``. ``work``: the resumable work folder (default
    ``<out>.work``).
    """
    t0 = time.perf_counter()
    say = say or (lambda s: None)
    cfg = _config(SemDeDupConfig, config, {"n_clusters": n_clusters, "eps": eps, "prefer": prefer, "sample": sample,
                                           "niter": niter, "seed": seed, "batch_size": batch_size,
                                           "partition_rows": partition_rows})
    _check_paths(out, pairs_out, work, emb, subset)
    store, out_path, parts, fp = _prepare(emb, cfg, out, overwrite, subset, engine, True)
    pairs_path = _check_out(pairs_out, overwrite, "--pairs-out")
    if pairs_path is not None and pairs_path.suffix.lower() != ".parquet":
        raise ValueError(f"--pairs-out {pairs_out}: pairs are written as .parquet")
    runner = get_engine(engine, address=address, workers=workers, progress=progress)

    def go(w: Work) -> DedupReport:
        clusters = _cluster(store, cfg, parts, runner, w, True, say)
        red = w.sub("dedup-" + _digest({"eps": cfg.eps, "prefer": cfg.prefer, "seed": cfg.seed}))
        tasks = [DedupTask(p, str(clusters.assign_folder), len(store.shards), str(red / f"part-{p:05d}.npz"),
                           cfg.eps, cfg.prefer, cfg.seed) for p in range(clusters.partitions)]
        results = runner.map(dedup_partition, tasks, desc="SemDeDup partitions", tasks=True)
        kept = np.zeros(store.n, dtype=bool)
        removed = np.zeros(cfg.n_clusters, dtype=np.int64)
        for r in results:
            with np.load(r["path"]) as z:
                kept[z["kept"]] = True
                removed[z["clusters"]] = z["lost"]
        n_kept = int(kept.sum())
        if pairs_path is not None:
            _write_pairs(pairs_path, [r["path"] for r in results])
        if out_path is not None:
            _write_indices(out_path, kept)
        return DedupReport(clusters.n, n_kept, cfg.eps, cfg.n_clusters, cfg.prefer, runner.name,
                           time.perf_counter() - t0, clusters.sizes, removed,
                           str(out_path) if out_path else None, str(pairs_path) if pairs_path else None,
                           None if out_path else np.flatnonzero(kept))

    try:
        return _run(go, Work(work, out_path, fp), keep_work)
    finally:
        runner.close()


# ---------------------------------------------------------------------------------------- density
def density(emb: Any, config: DBPConfig | Mapping[str, Any] | None = None, *, n_clusters: int | None = None,
            keep: float | None = None, temperature: float | None = None, prefer: str | None = None,
            neighbors: int | None = None, min_keep: int | None = None, sample: int | None = None,
            niter: int | None = None, seed: int | None = None, batch_size: int | None = None,
            partition_rows: int | None = None, out: str | os.PathLike | None = None, subset: Any = None,
            engine: str = "local", address: str | None = None, workers: int | None = None,
            work: str | os.PathLike | None = None, keep_work: bool = False, overwrite: bool = False,
            progress: bool = True, say: Any = None) -> DensityReport:
    """Density-based pruning (DBP) over the embeddings ``emb``: keep ``keep`` of the examples (of
    ``subset`` when given, e.g. the output of :func:`dedup`, as the paper prunes after SemDeDup), with
    per-cluster budgets from the clusters' complexity d_intra · d_inter (see
    :mod:`prunekit.data.web.dbp`). Settings as keywords or a :class:`DBPConfig`; ``out``, ``engine``,
    ``work`` as in :func:`dedup`.
    """
    t0 = time.perf_counter()
    say = say or (lambda s: None)
    cfg = _config(DBPConfig, config, {"n_clusters": n_clusters, "keep": keep, "temperature": temperature,
                                      "prefer": prefer, "neighbors": neighbors, "min_keep": min_keep,
                                      "sample": sample, "niter": niter, "seed": seed, "batch_size": batch_size,
                                      "partition_rows": partition_rows})
    _check_paths(out, None, work, emb, subset)
    store, out_path, parts, fp = _prepare(emb, cfg, out, overwrite, subset, engine, False)
    n = int(sum(len(s) for s in parts)) if parts is not None else store.n
    total = budget(cfg.keep, n)
    if cfg.min_keep * cfg.n_clusters > total:
        raise ValueError(f"keep {cfg.keep:g} of {n} examples is {total}, fewer than min_keep={cfg.min_keep} for each "
                         f"of {cfg.n_clusters} clusters; use fewer clusters, keep more, or min_keep=0")
    runner = get_engine(engine, address=address, workers=workers, progress=progress)

    def go(w: Work) -> DensityReport:
        clusters = _cluster(store, cfg, parts, runner, w, False, say)
        d_intra, d_inter, c = complexity(clusters.sizes, clusters.dist_sum, clusters.centroids, cfg.neighbors)
        budgets = dbp_budgets(c, clusters.sizes, total, cfg.temperature, cfg.min_keep)
        red = w.sub("density-" + _digest({"budgets": budgets.tolist(), "prefer": cfg.prefer, "seed": cfg.seed}))
        tasks = [DensityTask(p, str(clusters.assign_folder), len(store.shards), str(red / f"part-{p:05d}.npz"),
                             cfg.prefer, cfg.seed) for p in range(clusters.partitions)]
        results = runner.map(density_partition, tasks, desc="DBP partitions", extra=(budgets,), tasks=True)
        kept = np.zeros(store.n, dtype=bool)
        for r in results:
            with np.load(r["path"]) as z:
                kept[z["kept"]] = True
        n_kept = int(kept.sum())
        if out_path is not None:
            _write_indices(out_path, kept)
        return DensityReport(n, n_kept, cfg.keep, cfg.temperature, cfg.n_clusters, cfg.prefer, runner.name,
                             time.perf_counter() - t0, clusters.sizes, budgets, d_intra, d_inter,
                             str(out_path) if out_path else None, None if out_path else np.flatnonzero(kept))

    try:
        return _run(go, Work(work, out_path, fp), keep_work)
    finally:
        runner.close()
