"""Real architectures from torchvision and timm (random weights, small configs and inputs) through the one
verb: every family the graph must follow — grouped convolutions, squeeze-excitation, ConvNeXt's
permute + LayerNorm + Linear with layer scale, MobileNetV3, RegNet, DenseNet, channel shuffle, Swin's
shifted windows, nn.MultiheadAttention, a timm ViT — prunes, runs with the same output shape, and
loses a real share of its MACs; the wide sweep is benchmarks/zoo.py."""

from __future__ import annotations

import pytest
import torch

import prunekit.structured as ps
from prunekit.models.vision import classifier, import_timm, import_torchvision

tv = pytest.importorskip("prunekit.models.vision").import_torchvision()
timm = import_timm()


def _tv(name: str):
    m = tv.models
    torch.manual_seed(0)
    if name == "resnext":
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10), 32
    if name == "mobilenet_v3":
        return m.mobilenet_v3_small(num_classes=10, width_mult=0.5), 32
    if name == "regnet_y":
        from torchvision.models.regnet import BlockParams, RegNet

        params = BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
        return RegNet(params, num_classes=10), 32
    if name == "densenet":
        return m.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=10), 32
    if name == "shufflenet":
        return m.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=10), 32
    if name == "efficientnet":
        from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

        setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
        return EfficientNet(setting, 0.2, stochastic_depth_prob=0.2, num_classes=10, last_channel=last), 32
    if name == "convnext":
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
        return ConvNeXt(cfg, num_classes=10), 32
    if name == "swin":
        from torchvision.models.swin_transformer import SwinTransformer

        return SwinTransformer([4, 4], 24, [2, 2], [2, 4], [4, 4], num_classes=10), 32
    if name == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10), 32  # nn.MultiheadAttention
    raise KeyError(name)


def _timm(name: str):
    torch.manual_seed(0)
    if name == "vit":
        return timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                             num_classes=10), 32
    if name == "convnext":
        return timm.models.ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10), 32
    if name == "efficientnet":  # timm's BatchNormAct2d (functional batch norm), SE, DropPath
        return timm.create_model("tinynet_e", num_classes=10), 32
    if name == "regnet":
        return timm.create_model("regnetx_002", num_classes=10), 32
    raise KeyError(name)


CASES = [("tv", n) for n in ("resnext", "mobilenet_v3", "regnet_y", "densenet", "shufflenet", "efficientnet",
                             "convnext", "swin", "vit")] + [("timm", n) for n in ("vit", "convnext", "efficientnet",
                                                                                  "regnet")]


@pytest.mark.parametrize("source, name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_real_architecture_prunes_runs_and_loses_macs(source, name):
    model, size = (_tv if source == "tv" else _timm)(name)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    report = ps.prune_(model, x, sparsity=0.3, ignore=classifier(model))
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape
    assert report.macs_removed >= 0.3, str(report)  # 30% of channels: about half of the MACs when all prunes
    assert report.params_after < report.params_before
    out.sum().backward() if out.requires_grad else None


def test_grouped_convolution_keeps_its_groups_and_loses_the_same_channels_in_each():
    model, _ = _tv("resnext")
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    ps.prune_(model, x, sparsity=0.5, ignore=[model.fc])
    conv = model.layer1[0].conv2
    assert conv.groups == 8 and conv.in_channels % 8 == 0 and conv.out_channels == 16  # 32 → 16, 2 per group


def test_sparsity_zero_changes_nothing_on_windowed_attention():
    model, _ = _tv("swin")
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    ps.prune_(model, x, sparsity=0.0)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_torchvision_import_helper_needs_no_compiled_ops():
    assert import_torchvision() is tv and hasattr(tv.models, "resnet18")
