"""fold_bn_ and for_inference: same outputs, no BatchNorm, a frozen fused module."""

import pytest
import torch
from torch import nn

import prunekit.structured as ps
from prunekit.models import ResNetStyle
from prunekit.models.structured_zoo import MobileNetV2Style

from tests.tolerances import tol

X = torch.randn(2, 1, 28, 28)


def _with_stats(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_fold_bn_keeps_outputs_and_removes_batchnorm():
    model = _with_stats(ResNetStyle(widths=(8, 16, 32)))
    expected = model(X)
    ps.fold_bn_(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # folding rounds each weight once more and sums in another order: about 9 + 72 + 144 + 288 + 32 terms
    torch.testing.assert_close(model(X), expected, **tol(torch.float32, k=9 + 72 + 144 + 288 + 32, scale=4))
    with pytest.raises(ValueError, match="eval"):
        ps.fold_bn_(ResNetStyle().train())


def test_for_inference_matches_the_pruned_model_and_leaves_it_alone():
    model = _with_stats(MobileNetV2Style())
    small = ps.prune(model, X, sparsity=0.5)
    fast = ps.for_inference(small, X)
    # fused kernels (BN folded in, another batch) sum in other orders: at most about 900 terms along MobileNetV2's
    # path (stem 9, five blocks of 1×1 + 3×3 depthwise + 1×1, head 64, pooling 49, fc 128)
    fused = tol(torch.float32, k=900)
    torch.testing.assert_close(fast(torch.randn(5, 1, 28, 28) * 0 + X[:1]), small(X[:1]).expand(5, -1), **fused)
    torch.testing.assert_close(fast(X), small(X), **fused)
    assert any(isinstance(m, nn.BatchNorm2d) for m in small.modules())  # the source keeps its BatchNorms
    assert not fast.training
    with pytest.raises(ValueError, match="dict"):
        ps.for_inference(small, {"x": X})
