"""prune_transformer_ and the typed configs of heads, neurons and layers (what a recipe holds)."""

import pytest
import torch

import prunekit.structured as ps
from prunekit.core.config import ConfigError
from prunekit.core.deprecation import PrunekitDeprecationWarning
from prunekit.models.tiny import tiny_model

IDS = torch.randint(0, 128, (2, 10))


def test_configs_are_registered_and_round_trip():
    assert ps.TRANSFORMER_UNITS.names() == ["heads", "layers", "neurons"]
    cfg = ps.TRANSFORMER_UNITS.parse_config({"what": "heads", "sparsity": 0.5, "unit": "group"})
    assert isinstance(cfg, ps.HeadsConfig) and cfg.sparsity == 0.5
    assert ps.HeadsConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ps.LayersConfig().to_dict() == {"what": "layers", "sparsity": 0.25, "unit": "block", "reloadable": True}
    assert ps.HeadsConfig(strict=True).strict and ps.NeuronsConfig().reloadable
    with pytest.raises(ConfigError, match="unknown option 'ratio'"):
        ps.NeuronsConfig.parse({"ratio": 0.5})
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        ps.HeadsConfig.parse({"sparsity": 1.5})
    with pytest.raises(ConfigError, match="did you mean 'neurons'"):
        ps.TRANSFORMER_UNITS.parse_config({"what": "neuron"})


def test_a_config_and_keywords_are_the_same_call():
    a, b = tiny_model("qwen3"), tiny_model("qwen3")
    ra = ps.prune_transformer_(a, ps.NeuronsConfig(sparsity=0.5, importance="l1"))
    rb = ps.prune_transformer_(b, "neurons", sparsity=0.5, importance="l1")
    assert ra.to_dict() == rb.to_dict() and torch.equal(a(IDS).logits, b(IDS).logits)
    rc = ps.prune_transformer_(tiny_model("qwen3"), {"what": "heads"}, sparsity=0.5)
    assert rc.heads_after == 2 and rc.importance == "l2"  # no calibration: weights
    rd = ps.prune_transformer_(tiny_model("qwen3"), "heads", 0.5, calibration=IDS)
    assert rd.importance == "activation"


def test_ratio_still_works_with_a_warning_and_layers_need_data():
    with pytest.warns(PrunekitDeprecationWarning):
        rep = ps.prune_transformer_(tiny_model("llama"), "neurons", ratio=0.5)
    assert rep.intermediate_size == 64
    with pytest.raises(ValueError, match="calibration"):
        ps.prune_transformer_(tiny_model("llama"), "layers", 0.5)
    rep = ps.prune_transformer_(tiny_model("llama", layers=4), ps.LayersConfig(sparsity=0.5), calibration=IDS)
    assert rep.blocks_after == 2
