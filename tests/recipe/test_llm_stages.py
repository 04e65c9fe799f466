"""The slicing and LLM-recovery stages: parsed into their typed configs, run as the bench runner runs them."""

import pytest
import torch

from prunekit.pipeline import STAGES, Workspace, run_stages
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


def test_stages_slice_then_recover_a_model():
    model = tiny_model("llama", hidden=64, layers=2)
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    ws = Workspace(model=model, calibration=ids, progress=False)
    s = parse_stage({"stage": "slice", "sparsity": 0.25})
    r = parse_stage({"stage": "recover", "recover": "bias_norm", "steps": 3, "batch_size": 4})
    sliced, recovered = run_stages([s, r], ws).records
    assert sliced["hidden_after"] == 48 and model.config.hidden_size == 48
    assert recovered["steps"] == 3 and recovered["mode"] == "bias_norm"
    with pytest.raises(ValueError, match="has none"):
        run_stages([r], Workspace(model=model, progress=False))
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(ValueError, match=r"batches of 4 windows, but the 2 calibration windows give 2; calibrate on at "
                                         r"least 4 \(nsamples 4\)"):
        run_stages([parse_stage({"stage": "finalize"}), r], Workspace(model=model, calibration=ids[:2], progress=False))
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)  # checked before any stage ran
