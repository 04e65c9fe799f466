import json

import torch
from torch import nn

import prunekit as pk
from prunekit.models import MLP, SmallCNN


def test_counts_params_nonzeros_and_macs_exactly():
    model = MLP(64, (128, 64), 10)
    s = pk.summary(model, example_inputs=torch.zeros(3, 64))
    assert s.params == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert s.macs == 3 * (64 * 128 + 128 * 64 + 64 * 10)
    assert s.effective_macs == s.macs
    pk.prune_(model, "magnitude", 0.5)  # body.0 and body.2 lose half their weights
    s = pk.summary(model, example_inputs=torch.zeros(3, 64))
    assert s.nonzeros == s.params - (64 * 128 + 128 * 64) // 2
    assert s.effective_macs == 3 * ((64 * 128 + 128 * 64) // 2 + 64 * 10)
    rows = {r.name: r for r in s.layers}
    assert rows["body.0"].masked and rows["body.0"].sparsity == 0.5 and not rows["head"].in_scope
    assert s.scope_sparsity == 0.5


def test_conv_macs_and_table_and_json():
    model = SmallCNN(widths=(8, 16, 32))
    s = pk.summary(model, example_inputs=torch.zeros(1, 1, 28, 28))
    rows = {r.name: r for r in s.layers}
    assert rows["features.0"].macs == 28 * 28 * 8 * 9
    assert rows["features.4"].macs == 14 * 14 * 16 * 8 * 9
    data = json.loads(s.to_json())
    assert data["totals"]["params"] == s.params and len(data["layers"]) == len(s.layers)
    text = str(s)
    assert "features.4" in text and "total" in text and "stored sparse" in text


def test_tied_parameters_are_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert pk.summary(nn.Sequential(emb, head)).params == 40


def test_latency_at_several_batch_sizes():
    import pytest

    model = SmallCNN(widths=(8, 16, 32))
    s = pk.summary(model, example_inputs=torch.zeros(1, 1, 28, 28), latency_batches=(1, 64))
    assert set(s.latency) == {1, 64}
    assert 0 < s.latency[1].median_ms < s.latency[64].median_ms and s.latency[1].runs >= 3
    assert "batch 64" in str(s) and s.to_dict()["totals"]["latency_ms"]["64"] == s.latency[64].median_ms
    with pytest.raises(ValueError, match="needs example_inputs"):
        pk.summary(model, latency_batches=(1,))
    with pytest.raises(ValueError, match="positive integers"):
        pk.summary(model, example_inputs=torch.zeros(1, 1, 28, 28), latency_batches=(0,))
