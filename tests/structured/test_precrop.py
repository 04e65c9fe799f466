"""PreCropping: channel ratios from layerwise densities, by hand."""

import math

import pytest
import torch

from prunekit.models.reference import SmallCNN
from prunekit.structured.precrop import layer_densities, precrop_ratios, precrop_widths


def test_consistent_densities_are_met_exactly():
    # α1 = 0.5; α1·α2 = 0.25; α2·1 = 0.5 (the head keeps its classes)
    assert precrop_ratios([0.5, 0.25, 0.5]) == pytest.approx([0.5, 0.5, 1.0])
    assert precrop_ratios([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


def test_inconsistent_densities_are_a_least_squares_fit_in_log_space():
    # x1 = 0, x1 + x2 = log ¼, x2 = 0: by symmetry x1 = x2 = log(¼)/3
    a = 0.25 ** (1 / 3)
    assert precrop_ratios([1.0, 0.25, 1.0]) == pytest.approx([a, a, 1.0])
    with pytest.raises(ValueError, match="densities must be in"):
        precrop_ratios([0.0, 1.0])


def test_widths_from_synflow_densities_at_init():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(2, 1, 28, 28)
    dens = layer_densities(model, 0.9, "synflow", example_inputs=x)
    assert sum(d * n for d, n in zip(dens.values(), (288, 18432, 73728, 1280))) == pytest.approx(0.1 * 93728, rel=1e-3)
    widths = precrop_widths({"features.0": 32, "features.4": 64, "features.8": 128, "fc": 10}, dens)
    assert widths["fc"] == 10 and all(1 <= widths[n] <= w for n, w in (("features.0", 32), ("features.4", 64),
                                                                         ("features.8", 128)))
    narrow = SmallCNN(widths=(widths["features.0"], widths["features.4"], widths["features.8"]))
    dense_params = sum(p.numel() for p in SmallCNN().parameters())
    assert sum(p.numel() for p in narrow.parameters()) < 0.4 * dense_params
