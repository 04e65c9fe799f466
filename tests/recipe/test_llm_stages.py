"""The slicing and LLM-recovery stages: parsed into their typed configs, run by the bench runner."""

import pytest
import torch

from prunekit.bench.runner import STAGE_RUNNERS
from prunekit.core.config import ConfigError
from prunekit.models.hf import tiny_model
from prunekit.recipe import parse_stage
from prunekit.slicing import SliceConfig
from prunekit.train import RecoveryConfig


def test_stages_parse_into_their_configs_and_refuse_bad_fields():
    kind, cfg = parse_stage({"stage": "slice", "sparsity": 0.25, "rotation": "per_layer"})
    assert kind == "slice" and isinstance(cfg, SliceConfig) and cfg.rotation == "per_layer"
    kind, cfg = parse_stage({"stage": "recover", "recover": "lora", "steps": 20})
    assert kind == "recover" and isinstance(cfg, RecoveryConfig) and cfg.steps == 20
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        parse_stage({"stage": "slice", "sparsity": 1.0})
    with pytest.raises(ConfigError, match="unknown option 'epochs'"):
        parse_stage({"stage": "recover", "epochs": 1})


class _Ctx:
    def __init__(self, calibration):
        self.calibration = calibration

    def stage_inputs(self, seed):
        return {} if self.calibration is None else {"calibration": self.calibration}


def test_runners_slice_then_recover_a_model():
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    _, s = parse_stage({"stage": "slice", "sparsity": 0.25})
    out = STAGE_RUNNERS.get("slice")(_Ctx(ids), model, s, 0)
    assert out["hidden_after"] == 48 and model.config.hidden_size == 48
    _, r = parse_stage({"stage": "recover", "recover": "bias_norm", "steps": 3, "batch_size": 4})
    out = STAGE_RUNNERS.get("recover")(_Ctx(ids), model, r, 0)
    assert out["steps"] == 3 and out["mode"] == "bias_norm"
    with pytest.raises(ValueError, match="has none"):
        STAGE_RUNNERS.get("recover")(_Ctx(None), model, r, 0)
