"""Wanda and SparseGPT on MoE blocks: fused 3-D experts are pruned per expert, each calibrated on the tokens
routed to it; older per-expert nn.Linear layouts are pruned like any Linear; magnitude reports fused experts
it leaves dense."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.models.tiny import tiny_model

from tests.tolerances import assert_same_selection, tol

CALIB = torch.randint(0, 128, (6, 16))


def _routed_inputs(model):
    """The first MoE block's expert inputs (hidden, top-k index), from a dense forward over CALIB."""
    seen = []
    h = model.model.layers[0].mlp.experts.register_forward_pre_hook(lambda m, a: seen.append(a[:2]))
    with torch.no_grad():
        for i in range(0, len(CALIB), 8):
            model(input_ids=CALIB[i:i + 8])
    h.remove()
    return torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])


def test_wanda_ranks_each_expert_by_its_own_tokens():
    model = tiny_model("mixtral")
    hidden, index = _routed_inputs(model)
    w = model.model.layers[0].mlp.experts.gate_up_proj.detach().clone()
    pk.prune_(model, "wanda", 0.5, calibration=CALIB, progress=False)
    keep = get_mask(model.model.layers[0].mlp.experts, "gate_up_proj")
    for e in range(4):
        x = hidden[(index == e).any(-1)]
        metric = w[e].abs() * x.norm(dim=0)
        expect = torch.ones_like(metric, dtype=torch.bool)
        expect.scatter_(1, torch.sort(metric, dim=1, stable=True)[1][:, :32], False)
        # ‖x‖ summed here in another order than the library's statistics: near-equal scores may swap
        assert_same_selection(keep[e], expect, metric, **tol(torch.float32, k=len(x) + 1, scale=float(metric.max())))
    everyone = hidden.norm(dim=0)  # calibrating on all tokens would pick other weights for some expert
    assert any(not torch.equal(keep[e], (w[e].abs() * everyone).argsort(dim=1, stable=True).argsort(dim=1) >= 32)
               for e in range(4))


def test_an_expert_no_token_reaches_is_pruned_by_magnitude_and_noted():
    model = tiny_model("mixtral")
    for layer in model.model.layers:
        gate = layer.mlp.gate
        original = gate.forward

        def never_three(h, original=original):
            logits, weights, index = original(h)
            return logits, weights, torch.where(index == 3, torch.zeros_like(index), index)

        gate.forward = never_three
    with pytest.warns(UserWarning, match="received no calibration token"):
        report = pk.prune_(model, "sparsegpt", 0.5, calibration=CALIB, progress=False)
    assert any("experts.gate_up_proj[3]" in n for n in report.notes)
    w = model.model.layers[0].mlp.experts.gate_up_proj.detach()[3]
    assert (w == 0).float().mean() == pytest.approx(0.5)


def test_magnitude_leaves_fused_experts_dense_and_says_so():
    model = tiny_model("qwen3_moe")
    with pytest.warns(UserWarning, match="leaves 4 tensors in scope dense"):
        report = pk.prune_(model, "magnitude", 0.5, progress=False)
    assert set(report.skipped) == {f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1)
                                   for p in ("gate_up_proj", "down_proj")}
    # listed, and not counted: the sparsity is over the tensors magnitude pruned (it said < 0.3 when they counted)
    assert "model.layers.0.mlp.experts.down_proj" not in report.layers and report.sparsity == pytest.approx(0.5)
    experts = model.model.layers[0].mlp.experts
    assert report.params_left_dense == 2 * (experts.gate_up_proj.numel() + experts.down_proj.numel())


def test_a_failure_part_way_restores_expert_weights_and_masks(monkeypatch):
    from prunekit.methods.layerwise import BlockwiseMethod

    model = tiny_model("qwen2_moe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    original = BlockwiseMethod.prune_experts

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return original(self, *args)

    monkeypatch.setattr(BlockwiseMethod, "prune_experts", failing)
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=CALIB, progress=False)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


class _ExpertMLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class _OldMoE(nn.Module):
    """The per-expert nn.Linear layout of older MoE code (Mixtral in transformers 4)."""

    def __init__(self, d=64, f=32, experts=4):
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList([_ExpertMLP(d, f) for _ in range(experts)])

    def forward(self, h):
        shape = h.shape
        x = h.reshape(-1, shape[-1])
        top = self.gate(x).topk(2, dim=-1).indices
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = (top == e).any(-1).nonzero().reshape(-1)
            if len(rows):
                out[rows] += expert(x[rows])
        return out.reshape(shape)


def test_per_expert_linear_layers_are_calibrated_on_their_tokens():
    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.mlp = _OldMoE()
    seen = []
    moe = model.model.layers[0].mlp
    h = moe.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 64).detach()))
    with torch.no_grad():
        model(input_ids=CALIB)
    h.remove()
    x = seen[0]
    top = moe.gate(x).topk(2, dim=-1).indices
    w = moe.experts[2].w1.weight.detach().clone()
    report = pk.prune_(model, "wanda", 0.5, calibration=CALIB, batch_size=8, progress=False)
    assert "model.layers.0.mlp.experts.2.w1" in report.layers and report.sparsity == pytest.approx(0.5)
    mine = x[(top == 2).any(-1)]
    metric = w.abs() * mine.norm(dim=0)
    expect = torch.ones_like(metric, dtype=torch.bool)
    expect.scatter_(1, torch.sort(metric, dim=1, stable=True)[1][:, :32], False)
    assert torch.equal(get_mask(moe.experts[2].w1), expect)
