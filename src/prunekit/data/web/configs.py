"""Typed configs of the web-scale steps (``embed``, ``dedup``, ``density``): their settings as data, so
a recipe stage can hold one. Inputs, outputs and where it runs (engine, address) are not settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PositiveInt

from ...core.config import Config
from ...core.fraction import Keep, check_fraction
from ...core.registry import Registry
from ..budgets import NonNegativeInt, PositiveReal

Prefer = Literal["hard", "easy", "random"]
Eps = Annotated[float, BeforeValidator(lambda v: check_fraction(
    v, "eps", "(0, 1)", hint="SemDeDup removes an example whose cosine similarity to an earlier one exceeds 1 - eps"))]
Seed = Annotated[NonNegativeInt, Field(lt=2**31)]


class EmbedConfig(Config):
    """How ``embed_shards`` turns text shards into embedding shards."""

    step: Literal["embed"] = "embed"
    column: str = "text"
    model: str = "minilm-l6"
    embedding_column: str | None = None
    id_column: str | None = None
    batch_size: PositiveInt = 64
    max_length: PositiveInt = 256
    dtype: Literal["float16", "float32"] = "float16"
    file_format: Literal["npy", "parquet"] = "npy"


class ClusteringConfig(Config):
    """Spherical k-means shared by dedup and density: ``n_clusters`` centroids trained (faiss, ``niter``
    iterations, ``seed``) on ``sample`` examples (default max(100,000, 64·n_clusters), at most all);
    assignment in batches of ``batch_size`` rows; the per-cluster pass reads partitions of about
    ``partition_rows`` examples (its memory: partition_rows × dim floats)."""

    n_clusters: PositiveInt
    sample: PositiveInt | None = None
    niter: PositiveInt = 20
    seed: Seed = 0
    batch_size: PositiveInt = 8192
    partition_rows: PositiveInt = 100_000

    def sample_size(self, n: int) -> int:
        """How many examples train the centroids."""
        return min(n, self.sample or max(100_000, 64 * self.n_clusters))


class SemDeDupConfig(ClusteringConfig):
    """SemDeDup: in each cluster remove examples whose cosine similarity to an earlier one (in the
    ``prefer`` order: ``hard`` = farthest from the centroid first) exceeds 1 − ``eps``."""

    step: Literal["dedup"] = "dedup"
    eps: Eps
    prefer: Prefer = "hard"


class DBPConfig(ClusteringConfig):
    """Density-based pruning: keep ``keep`` of the examples, per-cluster budgets from
    softmax(d_intra·d_inter / ``temperature``) (d_inter over ``neighbors`` nearest centroids), at least
    ``min_keep`` per cluster, the ``prefer`` members of each cluster (``hard``: least prototypical)."""

    step: Literal["density"] = "density"
    keep: Keep
    temperature: PositiveReal = 0.1
    neighbors: PositiveInt = 20
    min_keep: NonNegativeInt = 1
    prefer: Prefer = "hard"


WEB_STEPS: Registry[type] = Registry("web data step", key="step")
