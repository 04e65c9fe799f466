import pytest
import torch

from prunekit import prune_
from prunekit.core.mask import get_mask
from prunekit.metrics.accuracy import accuracy
from prunekit.models.reference import MLP
from prunekit.train import average_models, fit, sparse_soup

from tests.tolerances import tol


def test_soup_is_as_sparse_as_its_ingredients_and_is_their_mean(digits_train, digits_test):
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))
    fit(model, digits_train, epochs=3, lr=0.1, batch_size=32, progress=False)
    prune_(model, "magnitude", 0.7, progress=False)
    before = model.body[0].weight.detach().clone()

    def train(m, seed):
        fit(m, digits_train, epochs=1, lr=0.02, batch_size=32, seed=seed, progress=False)

    soup = sparse_soup(model, train, seeds=(0, 1, 2), eval_fn=lambda m: accuracy(m, digits_test))
    assert torch.equal(model.body[0].weight.detach(), before)  # the input model is untouched
    mean = torch.stack([m.body[0].weight.detach() for m in soup.ingredients]).mean(0)
    # a mean of 3 weights, maybe summed in another order (Σ|terms| ≲ 1): 3·eps, and absolute for weights near 0
    assert torch.allclose(soup.model.body[0].weight.detach(), mean, **tol(torch.float32, k=3))
    assert torch.equal(get_mask(soup.model.body[0]), get_mask(model.body[0]))
    assert float((soup.model.body[0].weight.detach() == 0).float().mean()) >= 0.7 - 1e-3
    assert len(soup.ingredient_scores) == 3 and soup.soup_score == accuracy(soup.model, digits_test)
    assert soup.soup_score > 0.85
    assert len({round(s, 6) for s in soup.ingredient_scores}) > 1  # different batch orders, different models


def test_soup_needs_one_shared_mask():
    a, b = MLP(), MLP()
    prune_(a, "magnitude", 0.5, progress=False)
    prune_(b, "random", 0.5, progress=False)
    with pytest.raises(ValueError, match="different mask"):
        average_models([a, b])
    with pytest.raises(ValueError, match="at least two seeds"):
        sparse_soup(a, lambda m, s: None, seeds=(0,))
