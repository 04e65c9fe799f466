"""``score``: one float per training example, higher = harder (or less typical).

Training-based scores train ``n_models`` small proxy models (model k from ``model_fn()`` under seed
``seed + k``) and average over them; embedding-based scores cluster embeddings. With a
``torch.distributed`` process group the proxy models are shared out over the ranks and the
embedding pass is split by rows; every rank returns the same scores one process would.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..train.loop import fit
from . import dist
from .checks import check_finite_scores, check_labelled
from .clusters import concept_clusters, prototypicality
from .dynamics import el2n, grad_norms, loss, stream_outputs, train_with_dynamics
from .embed import embed, embed_texts

TRAINED = ("el2n", "grand", "loss", "forgetting", "aum")
EMBEDDED = ("prototypes", "density")
SCORES = TRAINED + EMBEDDED


def _check_dataset(dataset: Any) -> int:
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"dataset must be a torch Dataset of (input, label) pairs, got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty: nothing to score")
    return n


def _trained_scores(dataset: Dataset, method: str, model_fn: Callable[[], nn.Module], epochs: float,
                    n_models: int, lr: float, batch_size: int, seed: int, distributed: bool | None,
                    progress: bool) -> np.ndarray:
    n = _check_dataset(dataset)
    first = dataset[0]
    if not isinstance(first, (tuple, list)) or len(first) < 2:
        raise ValueError(f"method {method!r} needs a Dataset of (input, label) pairs; its first item is a "
                         f"{type(first).__name__}")
    rank, world_size = dist.world(distributed)
    total = np.zeros(n, dtype=np.float64)
    checked = False
    for k in range(rank, n_models, world_size):
        torch.manual_seed(seed + k)
        model = model_fn()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
        if not checked:
            check_labelled(dataset, model, method)
            checked = True
        if method in ("forgetting", "aum"):
            forgets, aum = train_with_dynamics(model, dataset, epochs=epochs, lr=lr, batch_size=batch_size,
                                               seed=seed + k, progress=progress)
            total += forgets if method == "forgetting" else -aum
            continue
        if epochs > 0:
            fit(model, dataset, epochs=epochs, lr=lr, batch_size=min(batch_size, n), seed=seed + k, progress=progress)
        if method == "grand":
            total += grad_norms(model, dataset, progress=progress)
        else:
            total += stream_outputs(model, dataset, el2n if method == "el2n" else loss, progress=progress, desc=method)
    return dist.sum_across(total, world_size) / n_models


def embeddings_of(dataset: Any, embed_fn: nn.Module | None = None, distributed: bool | None = None,
                  progress: bool = False) -> np.ndarray:
    """``(N, d)`` embeddings of ``dataset``: the array itself when it is already 2-D numbers, MiniLM
    sentence embeddings for a list of strings, else ``embed_fn`` applied to each input. Under
    ``torch.distributed`` each rank embeds a block of rows and all ranks receive every row."""
    if isinstance(dataset, (np.ndarray, torch.Tensor)):
        arr = np.asarray(dataset, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (N × d), got shape {arr.shape}")
        return arr
    is_text = isinstance(dataset, Sequence) and not isinstance(dataset, str) and len(dataset) > 0 \
        and all(isinstance(t, str) for t in dataset)
    if not is_text and embed_fn is None:
        raise ValueError("prototypes/density need embeddings: pass an (N, d) array, a list of strings "
                         "(embedded with all-MiniLM-L6-v2), or embed_fn= (a model mapping inputs to embeddings)")
    n = _check_dataset(dataset)
    rank, world_size = dist.world(distributed)
    start, stop = dist.block(n, rank, world_size)
    if is_text:
        rows = embed_texts(list(dataset[start:stop]), progress=progress)
    else:
        rows = embed(embed_fn, Subset(dataset, range(start, stop)), progress=progress)
    return dist.gather_rows(rows, n, world_size)


def score(dataset: Any, method: str = "el2n", *, model_fn: Callable[[], nn.Module] | None = None,
          epochs: float = 1.0, n_models: int = 1, embed_fn: nn.Module | None = None, n_clusters: int = 100,
          lr: float = 0.05, batch_size: int = 128, seed: int = 0, distributed: bool | None = None,
          progress: bool = True) -> np.ndarray:
    """One float64 per example of ``dataset``, higher = harder. Methods:

    - ``el2n``, ``grand``, ``loss``: after ``epochs`` of training of each proxy model (``epochs=0``:
      at initialization) — EL2N and GraNd from Paul et al., "Deep Learning on a Data Diet" (2021).
    - ``forgetting``: forgetting events over ``epochs`` of training (Toneva et al., ICLR 2019).
    - ``aum``: minus the area under the margin (Pleiss et al., NeurIPS 2020), so low margins rank hardest.
    - ``prototypes``: distance to the nearest of ``n_clusters`` k-means centroids of the embeddings
      (Sorscher et al., "Beyond neural scaling laws", 2022).
    - ``density``: the concept complexity of the example's k-means cluster (Abbas et al., ICLR 2024);
      use it with ``select(strategy="density", labels=concept_clusters(...).labels)``.

    Training scores need ``model_fn`` (builds a fresh model) and a Dataset of (input, label) pairs;
    embedding scores take an (N, d) array, a list of strings or a Dataset plus ``embed_fn``.
    Scores are averaged over ``n_models`` proxies, deterministic under ``seed``.
    """
    if method not in SCORES:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {', '.join(SCORES)}")
    if method in TRAINED:
        if model_fn is None or not callable(model_fn):
            raise ValueError(f"method {method!r} trains proxy models: pass model_fn=, a function returning a fresh nn.Module")
        if isinstance(n_models, bool) or int(n_models) != n_models or n_models < 1:
            raise ValueError(f"n_models must be a positive integer, got {n_models!r}")
        if not epochs >= 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if method in ("forgetting", "aum") and (int(epochs) != epochs or epochs < 1):
            raise ValueError(f"{method} counts statistics over whole epochs: epochs must be an integer >= 1, got {epochs}")
        if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        out = _trained_scores(dataset, method, model_fn, epochs, int(n_models), lr, batch_size, seed,
                              distributed, progress)
        return check_finite_scores(out, method)
    x = embeddings_of(dataset, embed_fn, distributed, progress)
    if method == "prototypes":
        return prototypicality(x, n_clusters=n_clusters, seed=seed)
    return concept_clusters(x, n_clusters=n_clusters, seed=seed).per_example()
