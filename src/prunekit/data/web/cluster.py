"""Spherical k-means with faiss, trained on a sample, then assignment streamed over every shard.

Training on a fixed-size sample (the lesson of NeMo Curator's GPU k-means running out of memory)
keeps the memory of clustering independent of the data size. Assignment is one task per embedding
shard: it reads the shard in batches, finds each example's nearest centroid (cosine similarity, ties
to the lower centroid), and writes the shard's rows *grouped by partition* (a partition is the set
of clusters ``c`` with ``c % partitions == p``) into the work folder, so that a partition's rows can
later be read from every shard as one contiguous slice. That map-side grouping is the shuffle that
brings each cluster's rows together without ever holding the data set in memory.

    work/assign/part-00000.index.npy    global example indices, grouped by partition (ascending inside)
    work/assign/part-00000.cluster.npy  int32 cluster ids
    work/assign/part-00000.sim.npy      float32 cosine similarity to the cluster's centroid
    work/assign/part-00000.emb.npy      the embeddings in the same order (only when the reduce needs them)
    work/assign/part-00000.offsets.npy  partition p is rows offsets[p]:offsets[p+1]; written last (= done)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...infra.atomic import atomic_file
from .store import EmbeddingStore, normalize

FIELDS = ("index", "cluster", "sim")


def training_sample(store: EmbeddingStore, subset: list[np.ndarray] | None, size: int, seed: int) -> np.ndarray:
    """``size`` examples drawn without replacement (seeded) from the considered rows, normalized."""
    counts = np.array([len(s) for s in subset] if subset is not None else [sh.rows for sh in store.shards])
    total = int(counts.sum())
    size = min(size, total)
    picks = np.sort(np.random.default_rng([seed, 7]).choice(total, size=size, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for i in range(len(store.shards)):
        lo, hi = np.searchsorted(picks, [bounds[i], bounds[i + 1]])
        if hi == lo:
            continue
        pos = picks[lo:hi] - bounds[i]
        local = subset[i][pos] if subset is not None else pos
        out.append(normalize(store.take(i, local), f"{store.folder or 'embeddings'} shard {store.shards[i].name}",
                             store.shards[i].offset + local))
    return np.concatenate(out)


def train_centroids(sample: np.ndarray, n_clusters: int, niter: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (unit length, float32) of the normalized ``sample`` (faiss, seeded)."""
    import faiss

    d = sample.shape[1]
    km = faiss.Kmeans(d, n_clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, math.ceil(len(sample) / n_clusters) + 1),
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    c = np.asarray(km.centroids, dtype=np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class AssignTask:
    """Assign shard ``shard`` (only rows ``subset`` of it, when given) and write its grouped rows."""

    shard: int
    folder: str
    partitions: int
    with_embeddings: bool
    batch_size: int
    subset: np.ndarray | None = None


def assign_files(folder: Path, shard: int) -> dict[str, Path]:
    """The work files of one shard's assignment (``offsets`` marks it complete)."""
    stem = f"part-{shard:05d}"
    names = [*FIELDS, "emb", "offsets"]
    return {k: folder / f"{stem}.{k}.npy" for k in names}


def _summary(task: AssignTask, files: dict[str, Path], n_clusters: int) -> dict[str, Any]:
    cluster = np.load(files["cluster"], mmap_mode="r")
    sim = np.load(files["sim"], mmap_mode="r")
    return {"shard": task.shard, "rows": len(cluster),
            "sizes": np.bincount(cluster, minlength=n_clusters).astype(np.int64),
            "dist_sum": np.bincount(cluster, weights=1.0 - np.asarray(sim, dtype=np.float64), minlength=n_clusters)}


def assign_shard(task: AssignTask, store: EmbeddingStore, centroids: np.ndarray) -> dict[str, Any]:
    """Nearest centroid of every considered row of one shard, written grouped by partition; returns the
    shard's cluster sizes and sums of cosine distance to the centroid (for d_intra)."""
    folder = Path(task.folder)
    files = assign_files(folder, task.shard)
    k = len(centroids)
    if files["offsets"].exists():
        return _summary(task, files, k)
    shard = store.shards[task.shard]
    rows, clusters, sims = [], [], []
    for start, batch in store.batches(task.shard, task.batch_size):
        local = np.arange(start, start + len(batch))
        if task.subset is not None:
            lo, hi = np.searchsorted(task.subset, [start, start + len(batch)])
            local = task.subset[lo:hi]
            batch = batch[local - start]
        if not len(batch):
            continue
        x = normalize(batch, f"{store.folder or 'embeddings'} shard {shard.name}", shard.offset + local)
        s = x @ centroids.T
        c = s.argmax(axis=1)
        rows.append(local)
        clusters.append(c.astype(np.int32))
        sims.append(s[np.arange(len(c)), c].astype(np.float32))
    local = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cluster = np.concatenate(clusters) if clusters else np.zeros(0, dtype=np.int32)
    sim = np.concatenate(sims) if sims else np.zeros(0, dtype=np.float32)
    part = cluster % task.partitions
    order = np.argsort(part, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=task.partitions))]).astype(np.int64)
    for name, arr in (("index", shard.offset + local[order].astype(np.int64)), ("cluster", cluster[order]),
                      ("sim", sim[order])):
        with atomic_file(files[name]) as tmp:
            np.save(tmp, arr, allow_pickle=False)
    if task.with_embeddings:
        _write_grouped_embeddings(files["emb"], store, task, local, order)
    with atomic_file(files["offsets"]) as tmp:
        np.save(tmp, offsets, allow_pickle=False)
    return _summary(task, files, k)


def _write_grouped_embeddings(path: Path, store: EmbeddingStore, task: AssignTask, local: np.ndarray,
                              order: np.ndarray) -> None:
    """Copy the considered rows of the shard into ``path`` in partition order, streaming the shard a
    second time and scattering each batch to its rows' places."""
    dest = np.empty(len(order), dtype=np.int64)
    dest[order] = np.arange(len(order))
    dtype = np.float16 if store.dtype == "float16" else np.float32
    with atomic_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(order), store.dim))
        for start, batch in store.batches(task.shard, task.batch_size):
            lo, hi = np.searchsorted(local, [start, start + len(batch)])
            if hi > lo:
                out[dest[lo:hi]] = batch[local[lo:hi] - start].astype(dtype)
        out.flush()
        del out


def read_partition(folder: Path, shards: int, p: int, with_embeddings: bool) -> dict[str, np.ndarray]:
    """Partition ``p``'s rows from every shard's assignment files, in shard order (so indices ascend)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*FIELDS, "emb")}
    for s in range(shards):
        files = assign_files(folder, s)
        offsets = np.load(files["offsets"])
        a, b = int(offsets[p]), int(offsets[p + 1])
        if b == a:
            continue
        for name in FIELDS:
            parts[name].append(np.asarray(np.load(files[name], mmap_mode="r")[a:b]))
        if with_embeddings:
            parts["emb"].append(np.asarray(np.load(files["emb"], mmap_mode="r")[a:b], dtype=np.float32))
    empty = {"index": np.int64, "cluster": np.int32, "sim": np.float32}
    out = {k: (np.concatenate(v) if v else np.zeros(0, dtype=empty[k])) for k, v in parts.items() if k in empty}
    if with_embeddings:
        out["emb"] = np.concatenate(parts["emb"]) if parts["emb"] else np.zeros((0, 0), dtype=np.float32)
    return out


def cluster_members(cluster: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(cluster id, positions)`` for each cluster present, ids ascending, positions ascending."""
    order = np.argsort(cluster, kind="stable")
    ids, starts = np.unique(cluster[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return [(int(c), order[a:b]) for c, a, b in zip(ids, starts, ends)]


def within_cluster_order(sim: np.ndarray, prefer: str, rng_seed: tuple[int, int]) -> np.ndarray:
    """The order in which a cluster's members are considered for keeping: ``hard`` — farthest from the
    centroid first (least prototypical, SemDeDup's and DBP's default); ``easy`` — nearest first;
    ``random`` — a permutation seeded by (seed, cluster). Ties keep index order."""
    if prefer == "hard":
        return np.argsort(sim, kind="stable")
    if prefer == "easy":
        return np.argsort(-sim, kind="stable")
    if prefer == "random":
        return np.random.default_rng(list(rng_seed)).permutation(len(sim))
    raise ValueError(f"prefer must be 'hard', 'easy' or 'random', got {prefer!r}")
