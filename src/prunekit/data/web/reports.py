"""What :func:`prunekit.data.dedup` and :func:`prunekit.data.density` return: dataclasses with
``to_dict()`` (for ``--json``) and a readable ``__str__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DedupReport:
    """What :func:`dedup` kept and removed, overall and per cluster."""

    n: int
    kept: int
    eps: float
    n_clusters: int
    prefer: str
    engine: str
    seconds: float
    cluster_sizes: np.ndarray = field(repr=False)
    cluster_removed: np.ndarray = field(repr=False)
    out: str | None = None
    pairs_out: str | None = None
    indices: np.ndarray | None = field(default=None, repr=False)

    @property
    def removed(self) -> int:
        """Examples removed as near-duplicates."""
        return self.n - self.kept

    def to_dict(self) -> dict[str, Any]:
        """Plain data (per-cluster sizes and losses as lists)."""
        return {"n": self.n, "kept": self.kept, "removed": self.removed, "eps": self.eps,
                "n_clusters": self.n_clusters, "prefer": self.prefer, "engine": self.engine,
                "seconds": self.seconds, "out": self.out, "pairs_out": self.pairs_out,
                "per_cluster": {"size": self.cluster_sizes.tolist(), "removed": self.cluster_removed.tolist()}}

    def __str__(self) -> str:
        worst = np.argsort(-self.cluster_removed, kind="stable")[:5]
        top = ", ".join(f"#{c} lost {self.cluster_removed[c]} of {self.cluster_sizes[c]}" for c in worst
                        if self.cluster_removed[c])
        where = f"; indices in {self.out}" if self.out else ""
        return (f"SemDeDup (eps {self.eps:g}, {self.n_clusters} clusters, keep {self.prefer}): kept {self.kept:,} of "
                f"{self.n:,}, removed {self.removed:,} ({100 * self.removed / max(self.n, 1):.1f}%) in "
                f"{self.seconds:.1f} s on {self.engine}{where}" + (f"\nmost duplicated clusters: {top}" if top else ""))


@dataclass
class DensityReport:
    """What :func:`density` kept, and the per-cluster quantities behind the budgets."""

    n: int
    kept: int
    keep: float
    temperature: float
    n_clusters: int
    prefer: str
    engine: str
    seconds: float
    cluster_sizes: np.ndarray = field(repr=False)
    budgets: np.ndarray = field(repr=False)
    d_intra: np.ndarray = field(repr=False)
    d_inter: np.ndarray = field(repr=False)
    out: str | None = None
    indices: np.ndarray | None = field(default=None, repr=False)

    @property
    def complexity(self) -> np.ndarray:
        """C = d_intra · d_inter per cluster."""
        return self.d_intra * self.d_inter

    def to_dict(self) -> dict[str, Any]:
        """Plain data (per-cluster quantities as lists)."""
        return {"n": self.n, "kept": self.kept, "keep": self.keep, "temperature": self.temperature,
                "n_clusters": self.n_clusters, "prefer": self.prefer, "engine": self.engine,
                "seconds": self.seconds, "out": self.out,
                "per_cluster": {"size": self.cluster_sizes.tolist(), "kept": self.budgets.tolist(),
                                "d_intra": self.d_intra.tolist(), "d_inter": self.d_inter.tolist()}}

    def __str__(self) -> str:
        full = self.cluster_sizes > 0
        rate = np.where(full, self.budgets / np.maximum(self.cluster_sizes, 1), 0)
        where = f"; indices in {self.out}" if self.out else ""
        return (f"DBP (keep {self.keep:g}, tau {self.temperature:g}, {self.n_clusters} clusters, keep {self.prefer}): "
                f"kept {self.kept:,} of {self.n:,} in {self.seconds:.1f} s on {self.engine}{where}\n"
                f"per-cluster kept fraction: min {rate[full].min():.2f}, median {np.median(rate[full]):.2f}, "
                f"max {rate[full].max():.2f}")
