"""Scores from the geometry of embeddings.

- Self-supervised prototypicality (Sorscher et al., "Beyond neural scaling laws: beating power law
  scaling via data pruning", NeurIPS 2022): k-means on embeddings; an example far from its nearest
  centroid is hard (a high score), one near it is prototypical (easy).
- Concept complexity (Abbas et al., "Effective pruning of web-scale datasets based on complexity of
  concept clusters", ICLR 2024): per k-means cluster, C = d_intra · d_inter, the mean distance of
  its members to the centroid times the mean distance of the centroid to its nearest other centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _prepare(embeddings: np.ndarray, n_clusters: int, normalize: bool) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N examples × d features), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be in [1, N={len(x)}], got {n_clusters}")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclass
class ConceptClusters:
    """k-means clusters of a data set's embeddings: per example its cluster (``labels``) and distance
    to the centroid (``distance``); per cluster its ``complexity`` (d_intra · d_inter)."""

    labels: np.ndarray
    distance: np.ndarray
    complexity: np.ndarray

    def per_example(self) -> np.ndarray:
        """The complexity of each example's cluster (what ``score(method="density")`` returns)."""
        return self.complexity[self.labels]


def concept_clusters(embeddings: np.ndarray, n_clusters: int = 100, seed: int = 0, normalize: bool = True,
                     n_neighbors: int = 20) -> ConceptClusters:
    """Cluster ``embeddings`` with k-means (scikit-learn, seeded) and measure each cluster's
    complexity as in Abbas et al. 2024 (``n_neighbors`` nearest centroids give d_inter)."""
    from sklearn.cluster import KMeans

    x = _prepare(embeddings, n_clusters, normalize)
    km = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(x)
    centers = km.cluster_centers_.astype(np.float64)
    labels = km.labels_.astype(np.int64)
    distance = np.linalg.norm(x - centers[labels], axis=1).astype(np.float64)
    sizes = np.bincount(labels, minlength=n_clusters)
    d_intra = np.bincount(labels, weights=distance, minlength=n_clusters) / np.maximum(sizes, 1)
    if n_clusters > 1:
        between = np.linalg.norm(centers[:, None, :] - centers[None, :, :], axis=-1)
        np.fill_diagonal(between, np.inf)
        l = min(n_neighbors, n_clusters - 1)
        d_inter = np.sort(between, axis=1)[:, :l].mean(1)
    else:
        d_inter = np.ones(1)
    return ConceptClusters(labels=labels, distance=distance, complexity=d_intra * d_inter)


def prototypicality(embeddings: np.ndarray, n_clusters: int = 100, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Distance of every example to its nearest k-means centroid (Sorscher et al. 2022): higher =
    less prototypical = harder. Embeddings are L2-normalized first unless ``normalize=False``."""
    from sklearn.cluster import KMeans

    x = _prepare(embeddings, n_clusters, normalize)
    km = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(x)
    return km.transform(x).min(1).astype(np.float64)
