"""The data stage: score the task's training examples, select what to keep (prunekit.data), and hand the
selection to the training stage after it (``finetune`` trains on the kept subset, or on RS2's fresh random
subset each epoch).

    - stage: data
      score: el2n                 # el2n, grand, loss, forgetting, aum, prototypes, density; none for random / rs2
      epochs: 1                   # proxy training of the trained scores (n_models proxies, seeds seed, seed+1, ...)
      select: {strategy: ccs, keep: 0.3, beta: 0.1}   # any prunekit.data.STRATEGIES config
    - stage: finetune

The stage is exactly ``prunekit.data.score`` then ``prunekit.data.select`` on ``ws.train_set(ws.seed)``: proxy
models come from ``ws.model_fn`` (a classification task's architecture, freshly initialised), embedding scores
(prototypes, density) embed with the workspace's model (``data.feature_extractor``), class-balanced selection
reads the data set's labels and density selection the k-means cluster of each example.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from ..core.config import Config
from .base import StageKind, StageResult, Workspace, register_stage

# prunekit.data.SCORES and "none" (written here so that the pipeline imports no data code until a data stage runs)
SCORE_NAMES = ("el2n", "grand", "loss", "forgetting", "aum", "prototypes", "density", "none")
STATE = "data selection"  # where the stage leaves its selection for the training stage after it
KEPT = "data kept"  # set by the check: how many examples the selection keeps
USED = "data used"  # set by a training stage's check after it: the selection is trained on


def _select_config(value: Any) -> Any:
    from ..data.select import STRATEGIES

    if isinstance(value, Mapping):
        return STRATEGIES.parse_config({"strategy": "hardest", **value}, where="select")
    return value


class DataConfig(Config):
    """Score the training examples (``score``: a ``prunekit.data.score`` method with its proxy settings ``epochs``,
    ``n_models``, ``lr``, ``batch_size``, ``n_clusters``; ``none`` for random selection), then ``select`` (a
    ``prunekit.data.STRATEGIES`` config: ``{strategy: ccs, keep: 0.3}``). ``sampler``: ``subset`` trains the next
    stage on the kept examples; ``rs2`` (Okanovic et al., ICLR 2024) on a fresh random ``keep`` share each epoch
    (with ``score: none`` and ``strategy: random``). Seeds: the scores' proxies and k-means draw from the run's
    seed (``ws.seed``, a recipe's seeds), the selection from ``select.seed``."""

    stage: Literal["data"] = "data"
    score: Literal[SCORE_NAMES] = "el2n"
    epochs: float = Field(1.0, ge=0)
    n_models: int = Field(1, ge=1)
    n_clusters: int = Field(100, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(128, ge=1)
    select: SerializeAsAny[Any] = Field(default_factory=lambda: {"strategy": "hardest", "keep": 0.5})
    sampler: Literal["subset", "rs2"] = "subset"

    @field_validator("select", mode="before")
    @classmethod
    def _parse_select(cls, v: Any) -> Any:
        from ..data.select import SelectConfig

        v = _select_config(v)
        if not isinstance(v, SelectConfig):
            raise ValueError(f"select must be a selection config such as {{strategy: ccs, keep: 0.3}}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        strategy = self.select.strategy
        if self.sampler == "rs2" and (strategy != "random" or self.score != "none"):
            raise ValueError("sampler rs2 draws a fresh random subset each epoch: use score: none and "
                             "select: {strategy: random, keep: ...}")
        if (strategy == "random") != (self.score == "none"):
            raise ValueError("strategy random ignores the scores: use score: none with it (and only with it)"
                             if strategy == "random" else f"strategy {strategy} ranks scores: name a score "
                             f"(one of {', '.join(SCORE_NAMES[:-1])})")
        if self.score in ("forgetting", "aum") and (int(self.epochs) != self.epochs or self.epochs < 1):
            raise ValueError(f"{self.score} counts over whole epochs: epochs must be an integer >= 1, got {self.epochs}")
        if strategy == "density" and self.score != "density":
            raise ValueError("strategy density allocates per k-means cluster: use it with score: density")
        return self


def _labels(dataset: Any) -> np.ndarray:
    """The class label of every example of a data set of (input, label) pairs."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].numpy()
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def _check_data(ws: Workspace, cfg: DataConfig) -> None:
    from ..data.checks import budget
    from ..data.scores import TRAINED

    if ws.train_set is None:
        raise ValueError("stage 'data' scores and selects training examples: it needs a classification task "
                         "(Workspace(train_set=...), a function of the seed giving (input, label) pairs)")
    if cfg.score in TRAINED and ws.model_fn is None:
        raise ValueError(f"score {cfg.score} trains proxy models: the workspace needs model_fn (a function building "
                         "a fresh model; a classification task gives it)")
    if cfg.score in ("prototypes", "density") and ws.model is None:
        raise ValueError(f"score {cfg.score} embeds the examples with the workspace's model, and there is none")
    n = len(ws.train_set(ws.seed))
    ws.state[KEPT] = budget(cfg.select.keep, n)  # a training stage after it checks its batch size against it


def _score(ws: Workspace, cfg: DataConfig, train: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The scores of ``train`` and the labels the selection needs (class ids, or cluster ids for density)."""
    from ..data import concept_clusters, embeddings_of, feature_extractor, score

    if cfg.score == "none":
        return np.zeros(len(train)), None
    labels = _labels(train) if cfg.select.needs_labels else None
    if cfg.score in ("prototypes", "density"):
        x = embeddings_of(train, feature_extractor(ws.model), progress=ws.progress)
        if cfg.score == "density":
            clusters = concept_clusters(x, n_clusters=cfg.n_clusters, seed=ws.seed)
            return clusters.per_example(), clusters.labels
        return score(x, "prototypes", n_clusters=cfg.n_clusters, seed=ws.seed), labels
    scores = score(train, cfg.score, model_fn=ws.model_fn, epochs=cfg.epochs, n_models=cfg.n_models, lr=cfg.lr,
                   batch_size=cfg.batch_size, seed=ws.seed, progress=ws.progress)
    return scores, labels


def _run_data(ws: Workspace, cfg: DataConfig) -> StageResult:
    from ..data import select

    train = ws.train_set(ws.seed)
    ws.say(f"scoring {len(train)} examples ({cfg.score}) and selecting ({cfg.select.strategy}) ...")
    scores, labels = _score(ws, cfg, train)
    keep = select(scores, cfg.select, labels=labels)
    ws.state[STATE] = {"indices": keep, "sampler": cfg.sampler, "keep": cfg.select.keep, "seed": cfg.select.seed}
    digest = hashlib.sha256(keep.tobytes()).hexdigest()[:16]
    record = {"score": cfg.score, "strategy": cfg.select.strategy, "sampler": cfg.sampler, "kept": len(keep),
              "of": len(train), "indices_hash": digest}
    if cfg.sampler == "rs2":
        what = f"RS2: a fresh random {cfg.select.keep:.0%} of {len(train)} examples each epoch"
    else:
        what = f"kept {len(keep)} of {len(train)} examples ({cfg.score}, {cfg.select.strategy})"
    if not ws.state.get(USED):
        what += "; no training stage follows, so the selection is recorded, not trained on"
    return StageResult(record, {"data": record}, what)


def _validate_data(cfg: DataConfig, stages: Sequence[Any], name_of: Any) -> None:
    kinds = [kind for kind, _ in stages]
    if kinds.count("data") > 1:
        raise ValueError("list one data stage: the training stage after it trains on one selection")


def trained_on_selection(ws: Workspace) -> Any:
    """The sampler a training stage draws its examples with when a data stage ran before it, else None."""
    from ..data.samplers import RS2Sampler, SubsetSampler

    chosen = ws.state.get(STATE)
    if chosen is None:
        return None
    n = len(ws.train_set(ws.seed)) if ws.train_set is not None else 0
    if chosen["sampler"] == "rs2":
        return RS2Sampler(n, chosen["keep"], seed=chosen["seed"])
    return SubsetSampler(chosen["indices"], seed=ws.seed + 1)


register_stage(StageKind(
    "data", lambda d, where: DataConfig.parse({"stage": "data", **d}, where=where), _run_data,
    "score the training examples and keep a subset (prunekit.data: EL2N, GraNd, forgetting, prototypes, density; "
    "hardest, CCS, class-balanced, random, RS2); the finetune stage after it trains on the kept examples",
    check=_check_data, validate=_validate_data, changes_model=False, in_recipes=True, noun="data pruning"))
