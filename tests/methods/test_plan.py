"""One plan per prune (immutable, applied at a sparsity given as an argument), one Method interface, one
registration idiom, methods reading their typed config."""

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.methods import (METHODS, Method, PruneConfig, SparseGPTConfig, apply_plan_, plan_prune,
                              register_method)
from prunekit.methods.layerwise import BlockwiseMethod, Budget
from prunekit.models.tiny import tiny_model

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _masks(model):
    return {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}


def test_plan_is_immutable_and_applying_it_leaves_it_unchanged():
    model = tiny_model("llama")
    plan = plan_prune(model, "wanda", 0.5, calibration=IDS, progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.sparsity = 0.3  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.skipped["x"] = "y"  # type: ignore[index]
    before = (plan.config, plan.targets, dict(plan.skipped))
    report = apply_plan_(model, plan, 0.25)
    assert report.target_sparsity == 0.25 and report.sparsity == 0.25  # 16 of each row's 64 weights
    assert report.config["sparsity"] == 0.25 and plan.config.sparsity == 0.5
    assert (plan.config, plan.targets, dict(plan.skipped)) == before


def test_one_plan_applied_at_rising_sparsity_equals_fresh_prunes():
    # A schedule's steps: the plan is made once; each step is the same masks a fresh prune_ gives.
    base = tiny_model("llama")
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    plan = plan_prune(a, "magnitude", 0.8, allocation="global", progress=False)
    for s in (0.2, 0.5, 0.8):
        apply_plan_(a, plan, s)
        pk.prune_(b, "magnitude", s, allocation="global", progress=False)
        ma, mb = _masks(a), _masks(b)
        assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_apply_plan_refuses_a_sparsity_the_pattern_does_not_allow_before_any_change():
    model = tiny_model("llama")
    plan = plan_prune(model, "magnitude", pattern="2:4", progress=False)
    with pytest.raises(ValueError, match="implies sparsity 0.5"):
        apply_plan_(model, plan, 0.7)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        apply_plan_(model, plan, 1.5)
    assert _masks(model) == {}


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_implements_the_protocol_runs_and_round_trips(name):
    impl = METHODS.get(name)()
    assert isinstance(impl, Method) and impl.name == name
    cls = METHODS.config(name)
    cfg = cls(sparsity=0.5, **({"max_iter": 10} if name == "alps" else {}))
    assert issubclass(cls, PruneConfig) and cls.from_yaml(cfg.to_yaml()) == cfg
    if isinstance(impl, BlockwiseMethod):  # calibrated, block by block: a tiny Llama
        make, kwargs = (lambda: tiny_model("llama")), dict(calibration=IDS)
    else:  # criteria: an MLP with data, a loss and example inputs
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
        make, kwargs = _mlp, dict(data=[(x, torch.tensor([0, 1, 2, 0, 1, 2]))], loss_fn=F.cross_entropy,
                                  example_inputs=x)
    report = pk.prune_(make(), cfg, progress=False, **kwargs)
    assert report.method == name and report.sparsity == pytest.approx(0.5, abs=0.02)
    # the keyword form builds the same config
    again = make()
    assert pk.prune_(again, name, 0.5, progress=False, **kwargs,
                     **({"max_iter": 10} if name == "alps" else {})).config == report.config


def test_register_method_is_the_one_way_and_checks_its_config():
    from typing import Literal

    class OtherConfig(PruneConfig):
        method: Literal["other"] = "other"

    with pytest.raises(ValueError, match=r"must have method: Literal\['mine'\]"):
        register_method("mine", OtherConfig)(object)
    assert "mine" not in METHODS


def test_sparsegpt_reads_its_typed_config():
    # the config's percdamp and blocksize reach the algorithm (no second default in the method)
    base = tiny_model("llama")
    runs = {}
    for cfg in (SparseGPTConfig(sparsity=0.5), SparseGPTConfig(sparsity=0.5, percdamp=0.5),
                SparseGPTConfig(sparsity=0.5, blocksize=16)):
        model = copy.deepcopy(base)
        pk.prune_(model, cfg, calibration=IDS, progress=False)
        runs[(cfg.percdamp, cfg.blocksize)] = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    default = runs[(0.01, 128)]
    assert not torch.equal(default, runs[(0.5, 128)]) and not torch.equal(default, runs[(0.01, 16)])
    with pytest.raises(ValueError, match="percdamp"):
        pk.prune_(base, "sparsegpt", 0.5, percdamp=0, calibration=IDS, progress=False)


def test_budget_keeps_the_allocated_count_exactly():
    # an allocation's count is used as it is for its own tensor (no fraction → count → fraction round trip);
    # another size (one expert of a fused tensor) gets the fraction
    for numel in (7, 4096, 12_582_912):
        for count in (0, 1, numel // 3, numel - 1):
            b = Budget.of_count(count, numel)
            assert b.prune_count(numel) == count and b.sparsity == count / numel
    assert Budget.of_count(300, 1000).prune_count(100) == 30 and Budget(0.25).prune_count(10) == 2


def test_grasp_needs_its_config_for_the_temperature():
    from prunekit.criteria import CRITERIA, ScoreContext
    from prunekit.core.scope import select_targets

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    data = [(torch.randn(5, 4), torch.randint(0, 2, (5,)))]
    with pytest.raises(ValueError, match="temperature from its config"):
        CRITERIA.get("grasp").fn(model, select_targets(model), ScoreContext(data=data, loss_fn=F.cross_entropy))
