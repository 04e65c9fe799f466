"""Fused MoE experts (transformers 5's 3-D gate_up_proj / down_proj): layout, routing, targets."""

import pytest
import torch

from prunekit.calibrate import InputStats, fused_experts
from prunekit.calibrate.moe import expert_activation, expert_targets, neuron_of_rows
from prunekit.models.tiny import MOE, tiny_model


@pytest.mark.parametrize("family", MOE)
def test_every_moe_family_exposes_its_fused_experts(family):
    model = tiny_model(family)
    found = fused_experts(model)
    assert [f.name for f in found] == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    f = found[0]
    assert (f.up, f.down, f.num_experts, f.transposed, f.gated) == ("gate_up_proj", "down_proj", 4, False, True)
    assert f.matrix("down_proj", 1).shape == (64, f.intermediate())
    assert neuron_of_rows(f).tolist()[: 2] == [0, 1] and neuron_of_rows(f)[f.intermediate()] == 0


def test_expert_statistics_come_from_the_tokens_routed_to_each_expert():
    model = tiny_model("mixtral")
    moe = model.model.layers[0].mlp
    fe = fused_experts(model)[0]
    routed = []
    moe.experts.register_forward_pre_hook(lambda m, a: routed.append((a[0].detach(), a[1].detach())))
    stats = InputStats({}, hessian=True, experts={fe.name: fe})
    with stats, torch.no_grad():
        model(input_ids=torch.randint(0, 128, (2, 9)))
    hidden, index = routed[0]
    for e in range(4):
        x = hidden[(index == e).any(-1)]
        key = fe.key("gate_up_proj", e)
        assert stats.n_tokens(key) == len(x) > 0
        torch.testing.assert_close(stats.gram(key), x.t() @ x, rtol=1e-4, atol=1e-4)
        gate, up = torch.nn.functional.linear(x, moe.experts.gate_up_proj[e]).chunk(2, dim=-1)
        h = moe.experts.act_fn(gate) * up
        torch.testing.assert_close(expert_activation(fe, e, x), h)
        torch.testing.assert_close(stats.col_norms(fe.key("down_proj", e)), h.norm(dim=0), rtol=1e-4, atol=1e-5)
    assert stats.n_tokens(fe.key("gate_up_proj", 0)) + stats.n_tokens(fe.key("gate_up_proj", 1)) + \
        stats.n_tokens(fe.key("gate_up_proj", 2)) + stats.n_tokens(fe.key("gate_up_proj", 3)) == 2 * 18  # top-2


def test_expert_targets_follow_the_scope():
    model = tiny_model("qwen3_moe")
    names = [t.name for t in expert_targets(model)]
    assert names == [f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("gate_up_proj", "down_proj")]
    assert [t.param for t in expert_targets(model)][:2] == ["gate_up_proj", "down_proj"]
    assert [t.name for t in expert_targets(model, {"exclude": ["*.down_proj"]})] == names[0::2]
    assert expert_targets(model, {"include": ["*.self_attn.*"]}) == []
    assert expert_targets(model, {"types": (torch.nn.Conv2d,)}) == []
