"""Data pruning: score training examples, select what to keep, train on it — in memory, or at web
scale over Parquet shards (embed → SemDeDup / DBP, on one process or Ray).

    scores = pk.data.score(dataset, method="el2n", model_fn=make_model, epochs=2, n_models=2)
    keep   = pk.data.select(scores, keep=0.1, strategy="ccs", labels=y, seed=0)
    loader = DataLoader(dataset, sampler=pk.data.RS2Sampler(len(dataset), keep=0.1, seed=0))

    pk.data.embed_shards("shards/*.parquet", "emb/", column="text")
    pk.data.dedup("emb/", n_clusters=1000, eps=0.05, out="keep-dedup.parquet")
    pk.data.density("emb/", n_clusters=1000, keep=0.3, out="keep-dbp.parquet", subset="keep-dedup.parquet")
"""

from .budgets import dbp_budgets
from .clusters import ConceptClusters, concept_clusters, prototypicality
from .distill import distillation_loss, fit_distilled
from .embed import TextEncoder, embed, embed_texts, feature_extractor
from .io import load_array, save_array
from .loop import fit_sampled
from .samplers import RS2Sampler, SubsetSampler
from .scores import SCORES, embeddings_of, score
from .select import (STRATEGIES, CCSConfig, ClassBalancedConfig, DensitySelectConfig, EasiestConfig, HardestConfig,
                     RandomConfig, SelectConfig, select)
from .web import (WEB_STEPS, DBPConfig, DedupReport, DensityReport, EmbedConfig, EmbeddingStore, EmbedReport,
                  SemDeDupConfig, dedup, density, embed_shards)

__all__ = [
    "CCSConfig", "ClassBalancedConfig", "ConceptClusters", "DBPConfig", "DedupReport", "DensityReport",
    "DensitySelectConfig", "EasiestConfig", "EmbedConfig", "EmbedReport", "EmbeddingStore", "HardestConfig",
    "RS2Sampler", "RandomConfig", "SCORES", "STRATEGIES", "SelectConfig", "SemDeDupConfig", "SubsetSampler",
    "TextEncoder", "WEB_STEPS", "concept_clusters", "dbp_budgets", "dedup", "density", "distillation_loss", "embed",
    "embed_shards", "embed_texts", "embeddings_of", "feature_extractor", "fit_distilled", "fit_sampled", "load_array",
    "prototypicality", "save_array", "score", "select",
]
