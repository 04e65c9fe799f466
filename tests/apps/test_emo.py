"""EMO layer-sparsity search: NSGA-II's sorting and crowding by hand, the masks, a search on a toy model."""

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.apps.emo import (crowding_distance, hypervolume_2d, masked_copy, non_dominated_fronts,
                               search_sparsities)
from prunekit.core.mask import get_mask


def test_fronts_and_crowding_by_hand():
    f = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [3.0, 3.0], [4.0, 4.0]])
    fronts = non_dominated_fronts(f)
    assert [x.tolist() for x in fronts] == [[0, 1, 2], [3], [4]]
    d = crowding_distance(f[[0, 1, 2]])
    # middle point: (4 − 1)/3 on objective 0 plus (4 − 1)/3 on objective 1
    assert np.isinf(d[0]) and np.isinf(d[2]) and d[1] == pytest.approx(2.0)
    assert hypervolume_2d(np.array([[0.5, 0.5]])) == pytest.approx(0.25)
    assert hypervolume_2d(np.array([[0.2, 0.6], [0.6, 0.2]])) == pytest.approx(0.8 * 0.4 + 0.4 * 0.4)


def test_masked_copy_prunes_each_layer_to_its_own_sparsity():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    m = masked_copy(model, ["0", "2"], [0.3, 0.75])
    assert int((~get_mask(m[0])).sum()) == 30 and int((~get_mask(m[2])).sum()) == 30
    assert get_mask(model[0]) is None  # the original is untouched
    kept = m[0].weight[get_mask(m[0])].abs().min()
    dropped = model[0].weight.detach()[~get_mask(m[0])].abs().max()
    assert kept >= dropped


def test_search_finds_the_layer_that_matters():
    # error = the share of layer "a"'s weight mass removed; layer "b" is free: the front keeps "a" dense
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(20, 20), "b": nn.Linear(20, 20)})
    total = float(model["a"].weight.detach().abs().sum())

    def error(m):
        return 1 - float(m["a"].weight.abs().sum()) / total

    res = search_sparsities(model, ["a", "b"], error, population=8, generations=8, seed=0)
    assert res.evaluations == 8 + 8 * 8
    assert len(res.front) >= 2
    # the front's best point under 10% error gets its low density from b, not from a
    good = [i for i in res.front if res.objectives[i][0] < 0.1]
    best = min(good, key=lambda i: res.objectives[i][1])
    assert res.sparsities[best][1] > 0.7 and res.sparsities[best][1] > res.sparsities[best][0] + 0.4
    with pytest.raises(ValueError, match="not found"):
        search_sparsities(model, ["c"], error)
