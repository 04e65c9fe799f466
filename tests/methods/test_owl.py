import pytest
import torch

import prunekit as pk
from prunekit.methods.owl import block_key, outlier_ratio, owl, owl_sparsities
from prunekit.models.hf import tiny_model


def test_block_key():
    assert block_key("model.layers.12.mlp.up_proj") == "model.layers.12"
    assert block_key("transformer.h.0.attn.c_attn") == "transformer.h.0"
    assert block_key("fc") == "fc"


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    s = torch.tensor([1.0] * 9 + [91.0])  # mean 10
    assert outlier_ratio([s], 5.0) == pytest.approx(10.0)
    assert outlier_ratio([s, torch.tensor([float("-inf")])], 5.0) == pytest.approx(10.0)


def test_sparsities_keep_the_mean_and_span_two_lambda():
    lods = {"a": 1.0, "b": 3.0, "c": 2.0}
    s = owl_sparsities(lods, 0.7, owl_lambda=0.1)
    assert sum(s.values()) / 3 == pytest.approx(0.7)
    assert s["a"] - s["b"] == pytest.approx(0.2)
    assert s["a"] > s["c"] > s["b"]  # more outliers → denser
    assert owl_sparsities({"a": 2.0, "b": 2.0}, 0.5) == {"a": 0.5, "b": 0.5}


def test_allocation_counts_per_layer():
    scores = {"m.layers.0.q": torch.ones(10, 10), "m.layers.0.k": torch.ones(10, 10),
              "m.layers.1.q": torch.cat([torch.ones(90), torch.full((10,), 100.0)]).reshape(10, 10)}
    counts = owl(scores, 0.5, owl_m=5.0, owl_lambda=0.1)
    assert counts["m.layers.0.q"] == counts["m.layers.0.k"] == 60
    assert counts["m.layers.1.q"] == 40


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_any_method_can_use_owl(method):
    model = tiny_model("llama", layers=4)
    with torch.no_grad():  # make block 2 heavy-tailed: more outliers, so it should stay denser
        model.model.layers[2].mlp.down_proj.weight[:, :4] *= 40
    report = pk.prune_(model, method, 0.5, allocation="owl", calibration=torch.randint(0, 128, (8, 16)),
                       owl_lambda=0.1, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    per_block = {}
    for name, s in report.layers.items():
        per_block.setdefault(block_key(name), []).append(s)
    assert min(per_block, key=lambda b: sum(per_block[b])) == "model.layers.2"
    spread = [sum(v) / len(v) for v in per_block.values()]
    assert max(spread) - min(spread) == pytest.approx(0.2, abs=0.02)
