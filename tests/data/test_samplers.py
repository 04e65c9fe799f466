import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.data import RS2Sampler, SubsetSampler


def test_rs2_walks_through_every_example_before_repeating():
    s = RS2Sampler(100, keep=0.2, seed=0)
    epochs = []
    for e in range(5):
        s.set_epoch(e)
        epochs.append(list(s))
    assert all(len(ep) == 20 for ep in epochs)
    assert sorted(sum(epochs, [])) == list(range(100))  # five disjoint subsets cover the data once
    s.set_epoch(5)
    assert sorted(s) != sorted(epochs[0])  # a new round draws a new permutation


def test_rs2_crosses_rounds_when_the_fraction_does_not_divide_n():
    s = RS2Sampler(10, keep=0.3, seed=1)
    seen = [s.subset(e).tolist() for e in range(4)]  # 3 + 3 + 3 + (1 from round 0, 2 from round 1)
    assert sorted(sum(seen[:3], []) + seen[3][:1]) == list(range(10))
    assert all(len(set(ep)) == 3 for ep in seen)


def test_rs2_is_deterministic_and_advances_without_set_epoch():
    a, b = RS2Sampler(50, 0.1, seed=7), RS2Sampler(50, 0.1, seed=7)
    first, second = list(a), list(a)
    assert first != second and first == list(b)
    assert list(RS2Sampler(50, 0.1, seed=8)) != first


@pytest.mark.parametrize("cls_args", [("rs2", 0.37), ("subset", None)])
def test_shards_over_ranks_cover_the_epoch_like_distributed_sampler(cls_args):
    kind, frac = cls_args
    idx = np.arange(3, 40, 2)

    def make(rank):
        if kind == "rs2":
            return RS2Sampler(30, frac, seed=0, rank=rank, world_size=3)
        return SubsetSampler(idx, seed=0, rank=rank, world_size=3)

    shards = [make(r) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    parts = [list(s) for s in shards]
    assert len({len(p) for p in parts}) == 1 and all(len(p) == len(shards[0]) for p in parts)
    full = shards[0].subset(2).tolist() if kind == "rs2" else idx.tolist()
    assert set(sum(parts, [])) == set(full)
    assert len(sum(parts, [])) - len(full) < 3  # padding by wrap-around only


def test_subset_sampler_reorders_each_epoch_and_feeds_a_loader():
    s = SubsetSampler([5, 1, 9, 3], seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == [1, 3, 5, 9]
    assert list(SubsetSampler([5, 1, 9, 3], shuffle=False)) == [5, 1, 9, 3]
    data = TensorDataset(torch.arange(12))
    got = torch.cat([b[0] for b in DataLoader(data, batch_size=2, sampler=s)]).tolist()
    assert sorted(got) == [1, 3, 5, 9]


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match=r"keep must be a number in \(0, 1\]"):
        RS2Sampler(10, 0)
    with pytest.raises(TypeError, match="keep must be a real number"):
        RS2Sampler(10, True)
    with pytest.raises(ValueError, match="positive integer"):
        RS2Sampler(0, 0.5)
    with pytest.raises(ValueError, match="rank"):
        RS2Sampler(10, 0.5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-empty"):
        SubsetSampler([])
    with pytest.raises(ValueError, match="non-negative"):
        SubsetSampler([-1, 2])


def test_subset_sampler_refuses_duplicate_indices():
    with pytest.raises(ValueError, match=r"2 duplicates \(e.g. \[3, 5\]\)"):
        SubsetSampler([3, 3, 5, 5, 7])


def test_rs2_fraction_is_a_deprecated_alias_of_keep():
    from prunekit.core.deprecation import PrunekitDeprecationWarning

    with pytest.warns(PrunekitDeprecationWarning, match="fraction= is deprecated, use keep="):
        old = RS2Sampler(50, fraction=0.2, seed=1)
    assert list(old) == list(RS2Sampler(50, keep=0.2, seed=1)) and old.keep == 0.2
    with pytest.raises(TypeError, match="not both"):
        RS2Sampler(50, keep=0.2, fraction=0.2)
