"""Data pruning: score training examples, select what to keep, train on it.

    scores = pk.data.score(dataset, method="el2n", model_fn=make_model, epochs=2, n_models=2)
    keep   = pk.data.select(scores, keep=0.1, strategy="ccs", labels=y, seed=0)
    loader = DataLoader(dataset, sampler=pk.data.RS2Sampler(len(dataset), fraction=0.1, seed=0))
"""

from .clusters import ConceptClusters, concept_clusters, prototypicality
from .distill import distillation_loss, fit_distilled
from .embed import embed, embed_texts
from .experiment import BENCH_METHODS, PruningComparison, compare_pruning
from .io import load_array, save_array
from .loop import fit_sampled
from .samplers import RS2Sampler, SubsetSampler
from .scores import SCORES, embeddings_of, score
from .select import STRATEGIES, select

__all__ = [
    "BENCH_METHODS", "ConceptClusters", "PruningComparison", "RS2Sampler", "SCORES", "STRATEGIES", "SubsetSampler",
    "compare_pruning", "concept_clusters", "distillation_loss", "embed", "embed_texts", "embeddings_of",
    "fit_distilled", "fit_sampled", "load_array", "prototypicality", "save_array", "score", "select",
]
