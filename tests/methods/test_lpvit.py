"""LPViT (Xu et al., ECCV 2024): Fisher block scores, the cost-ranked allocation and whole-block masks, by hand
and end to end on tiny timm ViT / Swin models."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.core.pattern import parse_pattern, pattern_holds
from prunekit.methods import LPViTConfig
from prunekit.methods.lpvit import block_scores, hardware_allocation
from prunekit.models.vision import import_timm

W = torch.arange(1.0, 17.0).reshape(4, 4)
G1 = torch.ones(4, 4)
G2 = torch.zeros(4, 4)
G2[:, 0] = 1.0  # only column 0 has a gradient


def test_block_scores_of_a_4x4_layer_by_hand():
    # 2×2 blocks: g·w per block. G1 (ones): 1+2+5+6=14, 3+4+7+8=22, 9+10+13+14=46, 11+12+15+16=54.
    # G2 (column 0): 1+5=6, 0, 9+13=22, 0. Score = ½·mean over the two gradients of (g·w)² = ¼(a² + b²):
    # (196+36)/4=58, 484/4=121, (2116+484)/4=650, 2916/4=729.
    got = block_scores(W, [G1, G2], parse_pattern("block:2x2"))
    assert torch.equal(got, torch.tensor([[58.0, 121.0], [650.0, 729.0]], dtype=torch.float64))  # exact in float64
    # 1×4 blocks (rows): G1: 10, 26, 42, 58; G2: 1, 5, 9, 13 → ¼(100+1), ¼(676+25), ¼(1764+81), ¼(3364+169)
    rows = block_scores(W, [G1, G2], parse_pattern("block:1x4"))
    assert torch.equal(rows, torch.tensor([[25.25], [175.25], [461.25], [883.25]], dtype=torch.float64))


def test_block_score_is_the_second_order_term_of_the_block_not_a_sum_of_weight_scores():
    # g·w summed inside the block before squaring: opposite contributions cancel (a per-weight Taylor score would not)
    w = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    g = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    assert block_scores(w, [g], parse_pattern("block:1x2")).tolist() == [[0.0], [0.0]]
    assert block_scores(w, [g], parse_pattern("block:2x1")).tolist() == [[4.5, 4.5]]  # ½·3², ½·(−3)²


def test_allocation_on_two_layers_of_known_cost_by_hand():
    # layer a: blocks cost 2 each, scores 1.8 and 4 → score/cost 0.9, 2.
    # layer b: blocks cost 1 each, scores 1, 1.5, 3 → 1, 1.5, 3.  Budget 3: 0.9 (a, cost 2) then 1 (b, cost 1) → 3.
    scores = {"a": torch.tensor([1.8, 4.0]), "b": torch.tensor([1.0, 1.5, 3.0])}
    assert hardware_allocation(scores, {"a": 2.0, "b": 1.0}, 3.0) == {"a": 1, "b": 1}
    # at equal costs the scores alone rank: 1 (b), 1.5 (b), 1.8 (a) → budget 3 takes b, b, a
    assert hardware_allocation(scores, {"a": 1.0, "b": 1.0}, 3.0) == {"a": 1, "b": 2}
    # a budget between block costs takes the block that reaches it; nothing asked, nothing taken
    assert hardware_allocation(scores, {"a": 2.0, "b": 1.0}, 2.5) == {"a": 1, "b": 1}
    assert hardware_allocation(scores, {"a": 2.0, "b": 1.0}, 0.0) == {"a": 0, "b": 0}
    # removed blocks (-inf) are neither ranked nor counted again
    done = {"a": torch.tensor([float("-inf"), 4.0]), "b": torch.tensor([1.0, 1.5, 3.0])}
    assert hardware_allocation(done, {"a": 2.0, "b": 1.0}, 2.0) == {"a": 0, "b": 2}
    with pytest.raises(ValueError, match="out of reach"):
        hardware_allocation(done, {"a": 2.0, "b": 1.0}, 8.0)
    with pytest.raises(ValueError, match="must be positive"):
        hardware_allocation(scores, {"a": 0.0, "b": 1.0}, 1.0)


def _vit():
    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=1,
                             num_classes=4, embed_dim=16, depth=2, num_heads=2).eval()


def _data(size, n=2):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 1, size, size, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


def _masks(model):
    return {n: get_mask(m) for n, m in model.named_modules() if get_mask(m) is not None}


def test_lpvit_on_a_timm_vit_masks_whole_blocks_at_the_asked_sparsity():
    model, data = _vit(), _data(16)
    report = pk.prune_(model, "lpvit", 0.5, pattern="block:4x4", cost="params", data=data, loss_fn=F.cross_entropy,
                       progress=False)
    masks = _masks(model)
    assert {"blocks.0.attn.qkv", "blocks.1.mlp.fc2"} <= set(masks)
    assert all(pattern_holds(m, parse_pattern("block:4x4")) for m in masks.values())
    # cost = params: the weight sparsity is the asked one to within the block overshoot (one 16-weight block)
    assert report.sparsity == pytest.approx(0.5, abs=16 / sum(m.numel() for m in masks.values()) + 1e-9)
    assert any("lpvit removed" in n for n in report.notes)
    assert torch.isfinite(model(data[0][0])).all()


def test_lpvit_prunes_the_blocks_the_fisher_score_ranks_lowest():
    # one layer in scope and cost = params: the removed blocks are exactly the lowest-scoring half
    model, data = _vit(), _data(16, n=3)
    layer = model.blocks[0].mlp.fc1
    grads = []
    for x, y in data:
        grads.append(torch.autograd.grad(F.cross_entropy(model(x), y), layer.weight)[0])
    want = block_scores(layer.weight.detach(), grads, parse_pattern("block:4x4"))
    pk.prune_(model, "lpvit", 0.5, pattern="block:4x4", cost="params", scope="blocks.0.mlp.fc1", data=data,
              loss_fn=F.cross_entropy, progress=False)
    kept = get_mask(layer).reshape(want.shape[0], 4, want.shape[1], 4)[:, 0, :, 0]
    # the scores are float64 ratios of the same batch gradients; the pruned half is below the kept half
    assert int((~kept).sum()) == want.numel() // 2 and float(want[~kept].max()) <= float(want[kept].min())


def test_lpvit_macs_budget_weights_blocks_by_the_tokens_their_layer_sees():
    # a Swin: stage 0 sees 14×14 = 196 tokens per image, stage 1 (after patch merging) 7×7 = 49
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=28, patch_size=2,
                              in_chans=1, num_classes=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                              window_size=7).eval()
    data = _data(28)
    pk.prune_(model, LPViTConfig(sparsity=0.5), data=data, loss_fn=F.cross_entropy, progress=False)
    masks = _masks(model)
    rows = {n: 196 if n.startswith("layers.0.") else 49 for n in masks}
    removed = sum(int((~m).sum()) * rows[n] for n, m in masks.items())
    total = sum(m.numel() * rows[n] for n, m in masks.items())
    # half the MACs removed, to within one block (16 weights) of the largest per-weight cost
    assert removed / total == pytest.approx(0.5, abs=16 * 196 / total + 1e-9)
    assert all(pattern_holds(m, parse_pattern("block:4x4")) for m in masks.values())


def test_lpvit_refuses_bad_input_before_anything_changes():
    model = _vit()
    with pytest.raises(ValueError, match="lpvit scores blocks by gradients"):
        pk.prune_(model, "lpvit", 0.5, progress=False)
    with pytest.raises(ValueError, match="allocation='global' does not apply"):
        pk.prune_(model, "lpvit", 0.5, allocation="global", data=_data(16), loss_fn=F.cross_entropy, progress=False)
    with pytest.raises(ValueError, match="lpvit prunes whole blocks"):
        LPViTConfig(sparsity=0.5, pattern="2:4")
    with pytest.raises(ValueError, match="cost"):
        LPViTConfig(sparsity=0.5, cost="watts")
    assert _masks(model) == {}
