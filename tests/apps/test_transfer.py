"""Source-set pruning for transfer: label-mapping counts, feature-mapping distances, the kept classes."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.apps.transfer import feature_mapping_scores, keep_source_classes, label_mapping_scores


class Fixed(nn.Module):
    """Features = the input itself (2-D); logits = minus the distance to three fixed class centres."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])

    def forward(self, x):
        return -torch.cdist(x, self.centres)


def test_label_mapping_counts_predicted_source_classes():
    target = TensorDataset(torch.tensor([[9.0, 1.0], [11.0, 0.0], [1.0, 9.0], [10.0, 2.0]]), torch.zeros(4))
    # three examples sit by source class 1, one by class 2, none by class 0
    assert label_mapping_scores(Fixed(), target, 3).tolist() == [0.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="one per source class"):
        label_mapping_scores(Fixed(), target, 4)


def test_feature_mapping_ranks_by_distance_to_target_clusters():
    src_x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0], [0.0, 10.0], [2.0, 10.0]])
    src_y = np.array([0, 0, 1, 1, 2, 2])  # class centroids (0, 1), (10, 1), (1, 10)
    target = TensorDataset(torch.tensor([[10.0, 4.0], [10.0, 6.0]]), torch.zeros(2))  # one cluster at (10, 5)
    s = feature_mapping_scores(Fixed(), TensorDataset(src_x, torch.tensor(src_y)), src_y, target, n_clusters=1)
    np.testing.assert_allclose(s, [-np.hypot(10, 4), -4.0, -np.hypot(9, 5)], rtol=1e-6)


def test_keep_source_classes():
    labels = np.array([0, 1, 2, 3, 1, 3, 0])
    classes, idx = keep_source_classes(np.array([0.5, 3.0, 1.0, 3.0]), labels, keep=0.5)
    assert classes.tolist() == [1, 3] and idx.tolist() == [1, 3, 4, 5]
    classes, _ = keep_source_classes(np.array([0.5, 3.0, 1.0, 3.0]), labels, keep=0.1)
    assert classes.tolist() == [1]  # at least one class; the tie 1 vs 3 breaks by class id
    with pytest.raises(ValueError, match="keep"):
        keep_source_classes(np.ones(4), labels, keep=0)
