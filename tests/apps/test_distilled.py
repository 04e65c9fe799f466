"""Image-level pruning of distilled sets: teacher EL2N, per-class selection, PCA's combine step."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.apps.distilled import combine_images, select_per_class, teacher_el2n


def test_teacher_el2n_by_hand():
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the inputs are the logits

    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    s = teacher_el2n(Fixed(), TensorDataset(logits, torch.tensor([0, 1])))
    # p = (.5, .5) vs (1, 0): √(.25+.25); p ≈ (1, 0) vs (0, 1): ≈ √2
    np.testing.assert_allclose(s, [np.sqrt(0.5), np.sqrt(2.0)], rtol=1e-6)


def test_select_per_class_keeps_the_easiest_of_each_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2])
    assert select_per_class(scores, labels, 0.5, "easiest").tolist() == [1, 3, 4, 7]
    assert select_per_class(scores, labels, 0.5, "hardest").tolist() == [0, 2, 5, 6]
    with pytest.raises(ValueError, match="keep"):
        select_per_class(scores, labels, 0.0)


def test_combine_images_packs_downsampled_same_class_tiles():
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 4, 4).clone()
    y = torch.tensor([1, 1, 1, 1, 0])
    mosaics = combine_images(x, y, factor=2)
    # class 0 has one image (dropped, fewer than 4); class 1's four images fill one mosaic in order
    assert mosaics.tensors[1].tolist() == [1]
    m = mosaics.tensors[0][0, 0]
    assert m[:2, :2].eq(0).all() and m[:2, 2:].eq(1).all() and m[2:, :2].eq(2).all() and m[2:, 2:].eq(3).all()
    # area average: a 2×2 checker of 0/1 inside one tile becomes 0.5
    z = torch.zeros(4, 1, 4, 4)
    z[0, 0, 0, 1] = z[0, 0, 1, 0] = 1.0
    assert float(combine_images(z, torch.zeros(4, dtype=torch.long)).tensors[0][0, 0, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="divisible"):
        combine_images(torch.zeros(4, 1, 5, 5), torch.zeros(4, dtype=torch.long))
