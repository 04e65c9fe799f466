import torch

from prunekit.core.stats import sparse_nbytes


def test_sparse_size_uses_a_bitmask_when_smaller():
    t = torch.zeros(1000)
    t[:100] = 1.0
    assert sparse_nbytes(t) == 125 + 100 * 4
    assert sparse_nbytes(torch.ones(1000)) == 4000
