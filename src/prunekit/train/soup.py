"""Sparse model soups (Zimmer et al., "Sparse Model Soups: A Recipe for Improved Pruning via Model
Averaging", 2023): retrain copies of one pruned model with different seeds (batch orders), then average
their weights. The copies share one mask, so the average is exactly as sparse as each of them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .state import current_masks, load_plain_state_, plain_state


@dataclass
class Soup:
    """A soup and its ingredients, with their scores under ``eval_fn`` when one was given."""

    model: nn.Module
    ingredients: list[nn.Module]
    ingredient_scores: list[float] = field(default_factory=list)
    soup_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Scores as plain data."""
        return {"ingredient_scores": list(self.ingredient_scores), "soup_score": self.soup_score}


def average_models(models: Sequence[nn.Module]) -> nn.Module:
    """A new model whose weights and float buffers are the mean of ``models``'; all must share one mask."""
    if len(models) < 1:
        raise ValueError("average_models needs at least one model")
    masks = [current_masks(m) for m in models]
    for i, m in enumerate(masks[1:], 1):
        if m.keys() != masks[0].keys() or any(not torch.equal(m[k], masks[0][k]) for k in m):
            raise ValueError(f"model {i} has a different mask from model 0; a sparse soup needs one shared mask "
                             "(retrain copies of the same pruned model)")
    states = [plain_state(m) for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise ValueError("the models to average have different tensors; they must share one architecture")
    mean = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            mean[k] = torch.stack([s[k] for s in states]).mean(0)
        else:
            mean[k] = v  # integer buffers (BatchNorm's num_batches_tracked): taken from the first
    soup = copy.deepcopy(models[0])
    load_plain_state_(soup, mean)
    return soup


def sparse_soup(model: nn.Module, train_fn: Callable[[nn.Module, int], Any], seeds: Sequence[int] = (0, 1, 2), *,
                eval_fn: Callable[[nn.Module], float] | None = None) -> Soup:
    """Retrain a copy of the pruned ``model`` for each seed with ``train_fn(copy, seed)`` (which should
    vary the batch order or other settings by the seed), average them, and score soup and ingredients
    with ``eval_fn`` when given. ``model`` itself is left unchanged."""
    if len(seeds) < 2:
        raise ValueError(f"a soup needs at least two seeds, got {list(seeds)}")
    ingredients = []
    for seed in seeds:
        ingredient = copy.deepcopy(model)
        train_fn(ingredient, seed)
        ingredients.append(ingredient)
    soup = average_models(ingredients)
    result = Soup(soup, ingredients)
    if eval_fn is not None:
        result.ingredient_scores = [float(eval_fn(m)) for m in ingredients]
        result.soup_score = float(eval_fn(soup))
    return result
