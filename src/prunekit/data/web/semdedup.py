"""SemDeDup (Abbas et al., "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication", 2023), the rule of its reference code (facebookresearch/SemDeDup, ``semdedup.py``):

inside each k-means cluster, order the members by cosine similarity to the centroid — farthest first
by default (``which_to_keep="hard"``; ``easy`` and ``random`` are the code's other choices) — and
remove member *j* when its cosine similarity to **any** member before it in that order exceeds
1 − eps (the column maximum of the upper triangle of the similarity matrix). One member of every
group of near-duplicates survives: the first in the order. Note the rule compares with every earlier
member, removed or not, so in a chain a ≈ b ≈ c (a, c far apart) both b and c go — as in the paper's
code; a greedy "compare only with kept members" rule would keep c.

The similarity matrix is computed in row blocks (memory ``block × cluster size``, never
cluster size²) with the same block shapes whatever engine runs it, so results are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...infra.atomic import atomic_file
from .cluster import cluster_members, read_partition, within_cluster_order
from .store import normalize

BLOCK_ELEMENTS = 1 << 23  # 8 M similarities (32 MB) per block


def max_similarity_to_earlier(x: np.ndarray, block_elements: int = BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """For each row *j* of the unit-length rows ``x``: the largest cosine similarity to a row *i < j*
    and that *i* (−inf and −1 for row 0)."""
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    which = np.full(n, -1, dtype=np.int64)
    step = max(1, block_elements // max(n, 1))
    for a in range(1, n, step):
        b = min(n, a + step)
        s = x[a:b] @ x[:b].T  # rows a..b-1 against every row up to b-1
        s[np.arange(b - a)[:, None] + a <= np.arange(b)[None, :]] = -np.inf  # only i < j counts
        arg = s.argmax(axis=1)
        best[a:b] = s[np.arange(b - a), arg]
        which[a:b] = arg
    return best, which


def semdedup_cluster(x: np.ndarray, sim_to_centroid: np.ndarray, eps: float, prefer: str,
                     rng_seed: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cluster: ``(kept positions, removed positions, position each removed one duplicates,
    their similarity)`` — positions into ``x`` (unit rows)."""
    order = within_cluster_order(sim_to_centroid, prefer, rng_seed)
    best, which = max_similarity_to_earlier(x[order])
    removed = best > 1.0 - eps
    return order[~removed], order[removed], order[which[removed]], best[removed]


@dataclass(frozen=True)
class DedupTask:
    """Deduplicate every cluster of partition ``partition`` and write the result to ``out``."""

    partition: int
    assign_folder: str
    shards: int
    out: str
    eps: float
    prefer: str
    seed: int


def dedup_partition(task: DedupTask) -> dict[str, Any]:
    """Run SemDeDup on each cluster of one partition; writes (and returns the path of) an ``.npz`` with
    the kept indices, the removed pairs and per-cluster sizes and losses."""
    out = Path(task.out)
    if out.exists():
        return {"partition": task.partition, "path": str(out)}
    rows = read_partition(Path(task.assign_folder), task.shards, task.partition, with_embeddings=True)
    kept, removed, dup_of, sims, clusters, sizes, lost = [], [], [], [], [], [], []
    if len(rows["index"]):
        x = normalize(rows["emb"], "embeddings", rows["index"])
        for c, pos in cluster_members(rows["cluster"]):
            k_pos, r_pos, d_pos, s = semdedup_cluster(x[pos], rows["sim"][pos], task.eps, task.prefer,
                                                      (task.seed, c))
            idx = rows["index"][pos]
            kept.append(idx[k_pos])
            removed.append(idx[r_pos])
            dup_of.append(idx[d_pos])
            sims.append(s)
            clusters.append(c)
            sizes.append(len(pos))
            lost.append(len(r_pos))

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, kept=cat(kept, np.int64), removed=cat(removed, np.int64), duplicate_of=cat(dup_of, np.int64),
                     similarity=cat(sims, np.float32), clusters=np.asarray(clusters, dtype=np.int64),
                     sizes=np.asarray(sizes, dtype=np.int64), lost=np.asarray(lost, dtype=np.int64))
    return {"partition": task.partition, "path": str(out)}
