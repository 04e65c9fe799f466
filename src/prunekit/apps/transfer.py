"""Source-set pruning for transfer learning, after "Selectivity Drives Productivity: Efficient Dataset
Pruning for Enhanced Transfer Learning" (Zhang et al., NeurIPS 2023): before pre-training on a source
set, keep only the source *classes* the downstream (target) task draws on, ranked by a surrogate model
trained on the source set:

- label mapping (LM): run the target examples through the surrogate; a source class scores the number of
  target examples it is predicted for (the frequency of the source label each target example maps to);
- feature mapping (FM): cluster the surrogate's features of the target examples (k-means, k clusters);
  a source class scores minus the distance from its feature centroid to the nearest target cluster centre.

The kept classes' examples are then the pre-training set (:func:`keep_source_classes`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.fraction import check_fraction
from ..data.embed import embed, feature_extractor
from ..infra.calling import call_model, output_tensor


def label_mapping_scores(surrogate: nn.Module, target: Dataset, n_source_classes: int,
                         batch_size: int = 512) -> np.ndarray:
    """Per source class, how many target examples the surrogate predicts as that class (higher = more
    useful to the target task)."""
    if isinstance(n_source_classes, bool) or int(n_source_classes) != n_source_classes or n_source_classes < 1:
        raise ValueError(f"n_source_classes must be a positive integer, got {n_source_classes!r}")
    if len(target) == 0:  # type: ignore[arg-type]
        raise ValueError("the target data set is empty")
    surrogate.eval()
    counts = np.zeros(int(n_source_classes), dtype=np.float64)
    with torch.no_grad():
        for x, *_ in torch.utils.data.DataLoader(target, batch_size=batch_size):
            logits = output_tensor(call_model(surrogate, x))
            if logits.shape[-1] != n_source_classes:
                raise ValueError(f"the surrogate gives {logits.shape[-1]} logits, expected one per source class "
                                 f"({n_source_classes})")
            counts += np.bincount(logits.argmax(-1).numpy(), minlength=n_source_classes)
    return counts


def feature_mapping_scores(surrogate: nn.Module, source: Dataset, source_labels: np.ndarray, target: Dataset,
                           n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Per source class (0..max label), minus the distance from its mean surrogate feature to the nearest
    of ``n_clusters`` k-means centres of the target's features (higher = closer to the target task)."""
    from sklearn.cluster import KMeans

    labels = np.asarray(source_labels)
    if labels.ndim != 1 or len(labels) != len(source):  # type: ignore[arg-type]
        raise ValueError(f"source_labels must hold one label per source example ({len(source)}), "  # type: ignore[arg-type]
                         f"got shape {labels.shape}")
    if len(target) < n_clusters:  # type: ignore[arg-type]
        raise ValueError(f"n_clusters={n_clusters} is more than the {len(target)} target examples")  # type: ignore[arg-type]
    f = feature_extractor(surrogate)
    fs, ft = embed(f, source), embed(f, target)
    centres = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(ft).cluster_centers_
    classes = int(labels.max()) + 1
    scores = np.full(classes, -np.inf)
    for c in range(classes):
        rows = fs[labels == c]
        if len(rows):
            scores[c] = -float(np.linalg.norm(centres - rows.mean(0), axis=1).min())
    return scores


def keep_source_classes(class_scores: np.ndarray, source_labels: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``keep`` fraction of source classes with the highest scores (at least one); return
    (kept classes, sorted indices of their source examples). Ties break by class id."""
    keep = check_fraction(keep, "keep", "(0, 1]")
    scores = np.asarray(class_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0 or np.isnan(scores).any():
        raise ValueError("class_scores must be a non-empty 1-D array of numbers without NaN")
    k = max(1, round(keep * scores.size))
    order = np.lexsort((np.arange(scores.size), -scores))
    classes = np.sort(order[:k])
    idx = np.flatnonzero(np.isin(np.asarray(source_labels), classes))
    return classes, idx
