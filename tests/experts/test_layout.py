"""MoE layouts of transformers 5 (fused, GPT-OSS transposed) and the per-expert modules of older models:
routing, expert outputs, weights and removal are exact."""

import pytest
import torch

from prunekit.experts import MOE_FAMILIES, find_moe_layers, routed_output, tiny_moe

from tests.tolerances import tol

GEN = torch.Generator().manual_seed(0)
# The block's forward and ours compute the same sums, maybe in other orders or kernels: router and gate/up
# (hidden 32), down (24, the shared expert 48) and the top-2 combination, about 115 terms along the path.
CLOSE = tol(torch.float32, k=32 + 32 + 48 + 3)


@pytest.fixture(scope="module", params=MOE_FAMILIES)
def family(request):
    return request.param


def test_layers_found_with_their_layout(family):
    model = tiny_moe(family)
    layers = find_moe_layers(model)
    expected = 1 if family == "deepseek_v3" else 2  # DeepSeek-V3's first layer is dense here
    assert len(layers) == expected
    layer = layers[-1]
    assert layer.num_experts == 8 and layer.routing.top_k == 2
    assert layer.layout == ("fused_transposed" if family == "gpt_oss" else "fused")
    assert layer.routing.rule == ("sigmoid_group" if family == "deepseek_v3" else "softmax_topk")
    assert bool(layer.shared) == (family in ("qwen2_moe", "deepseek_v3"))


@torch.no_grad()
def test_routed_output_equals_the_block(family):
    model = tiny_moe(family)
    layer = find_moe_layers(model)[-1]
    x = torch.randn(2, 8, layer.hidden_size, generator=GEN)
    out = layer.block(x)
    out = (out[0] if isinstance(out, tuple) else out).reshape(-1, layer.hidden_size)
    ours = routed_output(layer, x.reshape(-1, layer.hidden_size))
    if layer.shared:  # the block adds its shared expert on top
        shared = out - ours
        assert shared.abs().max() > 1e-4
        if family == "qwen2_moe":
            xs = x.reshape(-1, layer.hidden_size)
            expect = torch.sigmoid(layer.block.shared_expert_gate(xs)) * layer.block.shared_expert(xs)
        else:
            expect = layer.block.shared_experts(x).reshape(-1, layer.hidden_size)
        assert torch.allclose(shared, expect, **CLOSE)
    else:
        assert torch.allclose(out, ours, **CLOSE)


@torch.no_grad()
def test_masked_routing_is_exactly_the_pruned_router(family):
    model = tiny_moe(family)
    layer = find_moe_layers(model)[-1]
    x = torch.randn(64, layer.hidden_size, generator=GEN)
    removed = torch.zeros(8, dtype=torch.bool)
    removed[[1, 6]] = True  # one per DeepSeek group, so the groups stay equal
    before = routed_output(layer, x, removed)
    w_m, idx_m = layer.route(x, removed)
    keep = [e for e in range(8) if not removed[e]]
    layer.keep_(keep)
    assert layer.num_experts == 6
    w_p, idx_p = layer.route(x)
    assert torch.equal(torch.tensor(keep)[idx_p].sort(-1).values, idx_m.sort(-1).values)
    assert torch.allclose(routed_output(layer, x), before, **CLOSE)  # a narrower router: another kernel
    if not isinstance(layer.router, torch.nn.Linear):  # the router's own forward agrees
        _, w_r, idx_r = layer.router(x)
        dense = lambda w, i: torch.zeros(64, 6).scatter_add_(1, i.long(), w.float())  # noqa: E731
        assert torch.allclose(dense(w_r, idx_r), dense(w_p, idx_p), atol=1e-5)


def test_expert_weights_round_trip(family):
    model = tiny_moe(family)
    layer = find_moe_layers(model)[-1]
    x = torch.randn(16, layer.hidden_size, generator=GEN)
    t3 = layer.get_expert(3)
    y3 = layer.expert_forward(3, x)
    layer.set_expert(5, {k: v for k, (v, _) in t3.items()})
    assert torch.allclose(layer.expert_forward(5, x), y3, atol=1e-6)
    # a permutation of the hidden neurons leaves the expert's function unchanged
    perm = torch.randperm(t3["gate"][0].shape[t3["gate"][1]], generator=GEN)
    permuted = {k: (v.index_select(a, perm) if a is not None else v) for k, (v, a) in t3.items()}
    layer.set_expert(5, permuted)
    assert torch.allclose(layer.expert_forward(5, x), y3, **CLOSE)  # the down projection sums in another order
