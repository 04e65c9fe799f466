"""Density-based pruning (DBP; Abbas, Rusak et al., "Effective pruning of web-scale datasets based on
complexity of concept clusters", ICLR 2024), as its reference code (amro-kamal/effective_pruning)
computes it:

- d_intra of cluster *j*: the mean cosine distance (1 − cos) of its members to its centroid
  (``compute_avg_dist_to_cluster_centroid.py``);
- d_inter of cluster *j*: the mean cosine distance of its centroid to its ``neighbors`` (20) nearest
  other centroids (``compute_centroid_distances.py``, a faiss inner-product search);
- complexity C_j = d_inter · d_intra; budgets N_j from the quadratic program around
  softmax(C/τ)·(kept total) (``prune.py``; see :func:`prunekit.data.budgets.dbp_budgets`);
- inside a cluster, keep the N_j least prototypical members (farthest from the centroid,
  ``which_to_keep="hard"``, the code's default), the most prototypical (``easy``), or random ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...infra.atomic import atomic_file
from .cluster import cluster_members, read_partition, within_cluster_order


def inter_cluster_distance(centroids: np.ndarray, neighbors: int = 20) -> np.ndarray:
    """Mean cosine distance of each centroid to its ``neighbors`` nearest other centroids."""
    import faiss

    k, d = centroids.shape
    if k < 2:
        return np.ones(k)
    m = min(neighbors, k - 1)
    index = faiss.IndexFlatIP(d)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index.add(c)
    sims, ids = index.search(c, m + 1)
    out = np.empty(k)
    for j in range(k):  # drop the centroid itself (not always first when two centroids coincide)
        others = sims[j][ids[j] != j][:m]
        out[j] = np.mean(1.0 - others.astype(np.float64))
    return out


def complexity(sizes: np.ndarray, dist_sum: np.ndarray, centroids: np.ndarray,
               neighbors: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(d_intra, d_inter, C = d_intra · d_inter)`` per cluster (d_intra is 0 for an empty cluster)."""
    d_intra = np.where(sizes > 0, dist_sum / np.maximum(sizes, 1), 0.0)
    d_inter = inter_cluster_distance(centroids, neighbors)
    return d_intra, d_inter, d_intra * d_inter


@dataclass(frozen=True)
class DensityTask:
    """Keep ``budgets[c]`` members of every cluster ``c`` of partition ``partition``; write to ``out``."""

    partition: int
    assign_folder: str
    shards: int
    out: str
    prefer: str
    seed: int


def density_partition(task: DensityTask, budgets: np.ndarray) -> dict[str, Any]:
    """Apply the per-cluster budgets inside one partition; writes an ``.npz`` of the kept indices."""
    out = Path(task.out)
    if out.exists():
        return {"partition": task.partition, "path": str(out)}
    rows = read_partition(Path(task.assign_folder), task.shards, task.partition, with_embeddings=False)
    kept = []
    for c, pos in cluster_members(rows["cluster"]):
        n_keep = int(budgets[c])
        if n_keep <= 0:
            continue
        if task.prefer == "random":
            pick = np.random.default_rng([task.seed, c]).choice(len(pos), size=n_keep, replace=False)
        else:
            pick = within_cluster_order(rows["sim"][pos], task.prefer, (task.seed, c))[:n_keep]
        kept.append(rows["index"][pos[pick]])
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, kept=np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, dtype=np.int64))
    return {"partition": task.partition, "path": str(out)}
