"""Data pruning at web scale: embeddings streamed from Parquet shards, spherical k-means (faiss) on a
sample, SemDeDup and density-based pruning (DBP) per cluster — in one process or on Ray, with the
same results. See docs/data.md ("Web scale")."""

from .configs import WEB_STEPS, ClusteringConfig, DBPConfig, EmbedConfig, SemDeDupConfig
from .embed import EmbedReport, embed_shards
from .engine import ENGINES
from .pipeline import DedupReport, DensityReport, dedup, density
from .store import EmbeddingStore

WEB_STEPS.add("embed", embed_shards, config=EmbedConfig)
WEB_STEPS.add("dedup", dedup, config=SemDeDupConfig)
WEB_STEPS.add("density", density, config=DBPConfig)

__all__ = ["DBPConfig", "DedupReport", "DensityReport", "ENGINES", "EmbedConfig", "EmbedReport", "EmbeddingStore",
           "ClusteringConfig", "SemDeDupConfig", "WEB_STEPS", "dedup", "density", "embed_shards"]
