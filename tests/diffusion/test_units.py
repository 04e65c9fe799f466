"""Units of a diffusers UNet2DModel: masking a unit and deleting it compute the same thing, and the recorded
costs are what the parameter count and the MAC counter see."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.diffusion.model import UNetConfig, build_unet
from prunekit.diffusion.units import find_unit_layers, keep_lowest_removed, masked, remove_units_, unit_costs
from prunekit.metrics.macs import count_macs
from tests.tolerances import tol

TINY = UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


@pytest.fixture
def unet():
    return build_unet(TINY, seed=0).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor([5, 400, 999]), torch.tensor([1, 3, 9])


def _keep(layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = [torch.rand(layer.units, generator=g) > 0.5 for layer in layers]
    for k in keep:
        k[0] = True
    return keep


def test_layers_found_with_their_parameters(unet):
    layers = find_unit_layers(unet)
    kinds = [layer.kind for layer in layers]
    # 2 down + 2 mid + 4 up resnet blocks, attention in the low-resolution down/up blocks and the middle
    assert kinds.count("resnet") == 8 and kinds.count("attention") == 4
    r = unet.get_submodule("down_blocks.0.resnets.0")
    # one group = 2 channels: conv1 (8·9 weights + bias), norm2 (2), time_emb_proj (32 + bias), conv2 (8·9)
    assert layers[0].size == 2 and layers[0].params == 2 * (8 * 9 + 1 + 2 + 33 + 8 * 9)
    assert r.norm2.num_groups == layers[0].units == 4


def test_removal_equals_the_masked_unet_and_its_costs(unet):
    x, t, y = _inputs()
    layers = find_unit_layers(unet)
    unit_costs(unet, layers, x, y)
    keep = _keep(layers)
    with torch.no_grad(), masked(unet, layers, lambda: [k.float() for k in keep]):
        want = unet(x, t, class_labels=y).sample
    pruned = copy.deepcopy(unet)
    inputs = {"sample": x[:1], "timestep": t[:1], "class_labels": y[:1]}
    macs_before = count_macs(pruned, inputs)
    report = remove_units_(pruned, copy.deepcopy(layers), keep)
    with torch.no_grad():
        got = pruned(x, t, class_labels=y).sample
    # the pruned UNet drops exact zeros from each sum; the rest is the same ~12 layers of sums of at most
    # 16·9 = 144 terms, taken in another blocking order
    torch.testing.assert_close(got, want, **tol(torch.float32, 12 * 144, scale=10.0))
    removed = [(layer, int((~k).sum())) for layer, k in zip(layers, keep)]
    assert report.params_before - report.params_after == sum(layer.params * n for layer, n in removed) > 0
    assert macs_before - count_macs(pruned, inputs) == sum(layer.macs * n for layer, n in removed)
    assert unet.get_submodule("down_blocks.0.resnets.0").norm2.num_groups == 4  # the original is untouched


def test_per_sample_masks_route_each_sample(unet):
    x, t, y = _inputs()
    layers = find_unit_layers(unet)
    keep_a, keep_b = _keep(layers, 0), _keep(layers, 1)
    per_sample = [torch.stack([a.float(), b.float(), a.float()]) for a, b in zip(keep_a, keep_b)]
    with torch.no_grad():
        with masked(unet, layers, lambda: per_sample):
            both = unet(x, t, class_labels=y).sample
        with masked(unet, layers, lambda: [k.float() for k in keep_b]):
            only_b = unet(x, t, class_labels=y).sample
        with masked(unet, layers, lambda: [k.float() for k in keep_a]):
            only_a = unet(x, t, class_labels=y).sample
    # same arithmetic per sample (a mask multiplies elementwise): equal up to batched-kernel order
    torch.testing.assert_close(both[1], only_b[1], **tol(torch.float32, 12 * 144, scale=10.0))
    torch.testing.assert_close(both[0], only_a[0], **tol(torch.float32, 12 * 144, scale=10.0))
    assert not torch.allclose(only_a[1], only_b[1])


def test_bad_keep_is_refused_before_anything_changes(unet):
    layers = find_unit_layers(unet)
    keep = _keep(layers)
    keep[2] = torch.zeros(layers[2].units, dtype=torch.bool)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ValueError, match="every unit would be removed"):
        remove_units_(unet, layers, keep)
    with pytest.raises(ValueError, match="expected"):
        remove_units_(unet, layers, [torch.ones(3, dtype=torch.bool)] * len(layers))
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lowest_scored_units_go_first_until_the_amount(unet):
    layers = find_unit_layers(unet)
    scores = [torch.arange(layer.units, dtype=torch.float32) + 10 * i for i, layer in enumerate(layers)]
    keep = keep_lowest_removed(layers, scores, amount=layers[0].params * 2 + 1)
    # layer 0 holds the lowest scores (0..3): three of its units go (the third crosses the amount)
    assert keep[0].tolist() == [False, False, False, True]
    assert all(bool(k.all()) for k in keep[1:])
    everything = keep_lowest_removed(layers, scores, amount=1e12)
    assert all(int(k.sum()) == 1 for k in everything)  # one unit per layer always stays


def test_a_pruned_unet_saves_and_loads_with_its_shapes(unet, tmp_path):
    from prunekit.diffusion.ddpm import load_unet, save_unet

    x, t, y = _inputs()
    layers = find_unit_layers(unet)
    remove_units_(unet, layers, _keep(layers))
    save_unet(unet, tmp_path / "pruned")
    back = load_unet(tmp_path / "pruned")
    with torch.no_grad():
        # the same weights and the same calls: bit-identical
        torch.testing.assert_close(back(x, t, class_labels=y).sample, unet(x, t, class_labels=y).sample,
                                   rtol=0, atol=0)
    assert [m.units for m in find_unit_layers(back)] == [m.units for m in layers]


def test_a_layout_the_units_cannot_follow_is_one_line():
    from diffusers import UNet2DConditionModel

    cross = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                                 cross_attention_dim=8, attention_head_dim=4)
    with pytest.raises(ValueError, match=r"attn2: only plain self-attention heads can be pruned") as e:
        find_unit_layers(cross)
    assert "\n" not in str(e.value)


def test_frozen_stops_the_weights_training_and_restores_them_however_the_block_ends():
    import pytest
    from torch import nn

    from prunekit.diffusion.units import frozen

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).train()
    net[0].bias.requires_grad_(False)  # a flag of the caller's own, kept as it was
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(net):
            assert not net.training and not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("boom")
    assert net.training and net[0].weight.requires_grad and not net[0].bias.requires_grad
