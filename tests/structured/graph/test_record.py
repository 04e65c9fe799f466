"""What the recorded graph follows instead of pinning: layer scales and other parameters that meet the
channels, functional norms inside overridden forwards, no-op wrappers, addcmul, channel shuffles, head
splits with their stored sizes, reshapes tied to another width, and shared weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit.structured as ps
from prunekit.models.vision import import_timm, import_torchvision

X = torch.randn(2, 3, 16, 16)


class LayerScaled(nn.Module):
    """ConvNeXt's block at its smallest: depthwise conv, permute, LayerNorm, Linear, GELU, Linear, a
    learnable per-channel scale, permute back, residual — and a GRN-style addcmul."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, 4 * c))
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        h = F.gelu(self.fc1(y))
        h = torch.addcmul(self.beta, h, h.pow(2).mean((1, 2), keepdim=True))  # GRN-like
        y = (self.fc2(h) * self.gamma).permute(0, 3, 1, 2)
        x = x + torchvision_stochastic_depth(y)
        return self.head(x.mean((2, 3)))


def torchvision_stochastic_depth(y):
    tv = import_torchvision()
    return tv.ops.stochastic_depth(y, 0.1, "row", training=False)


def test_layer_scale_layernorm_permute_and_addcmul_are_followed():
    model = LayerScaled().eval()
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.stem.out_channels == 4 and pruned.dw.groups == 4 and pruned.gamma.shape == (4,)
    assert pruned.norm.normalized_shape == (4,) and pruned.fc1.out_features == 16 and pruned.beta.shape[-1] == 16
    assert pruned(X).shape == (2, 5)


def test_timm_functional_norms_and_weight_standardized_convs_are_cut_like_their_modules():
    timm = import_timm()
    from timm.layers import BatchNormAct2d, LayerNorm2d, ScaledStdConv2d

    model = nn.Sequential(ScaledStdConv2d(3, 8, 3), BatchNormAct2d(8), nn.Conv2d(8, 8, 1), LayerNorm2d(8),
                          nn.Conv2d(8, 4, 1)).eval()
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned[0].out_channels == 4 and pruned[0].gain.shape[0] == 4 and pruned[1].num_features == 4
    assert pruned[3].normalized_shape == (4,) and pruned[4].in_channels == 4
    assert pruned(X).shape == (2, 4, 16, 16)
    assert timm is not None


def test_head_splits_follow_stored_sizes_and_reshapes_tied_to_the_input_width():
    class OldStyleAttention(nn.Module):  # timm < 0.9 and Swin: x.reshape(B, N, C) with C the input width
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
            return self.proj(x)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(6, 32), OldStyleAttention(), nn.Linear(32, 3)

        def forward(self, x):
            h = self.embed(x)
            return self.head(h + self.attn(h))

    model = Tiny().eval()
    x = torch.randn(2, 5, 6)
    report = ps.prune_(model, x, sparsity=0.3)  # alone: 32 → 23 channels (23 // 4 = 5) but head dims 8 → 6
    assert report.details["ties"] >= 1  # the check found that C // heads moves with the input width
    assert model.embed.out_features == 24 and model.attn.qkv.out_features == 72 and model(x).shape == (2, 5, 3)


def test_stored_head_dim_and_hidden_dim_are_updated():
    tv = import_torchvision()
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(32, 8, 2, 2, 48, 96, num_classes=10).eval()  # reshape(n, self.hidden_dim, -1)
    x = torch.randn(1, 3, 32, 32)
    ps.prune_(model, x, sparsity=0.5, ignore=[model.heads.head])
    assert model.hidden_dim == model.conv_proj.out_channels == 24 and model.image_size == 32
    assert model(x).shape == (1, 10) and tv is not None


def test_a_weight_shared_by_two_modules_is_cut_once_the_same_way():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)
            self.b.weight = self.a.weight  # one tensor, two consumers
            self.c = nn.Linear(8, 2)

        def forward(self, x):
            return self.c(torch.relu(self.a(x)) + torch.sigmoid(self.b(x)))

    model = Tied().eval()
    x = torch.randn(3, 4)
    pruned = ps.prune(model, x, sparsity=0.5)
    assert pruned.b.weight is pruned.a.weight and pruned.a.weight.shape == (4, 4)
    assert pruned.a.out_features == pruned.b.out_features == 4 and pruned(x).shape == (3, 2)


def test_a_weight_used_at_two_widths_is_kept_whole():
    class TwoWays(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))
            self.a = nn.Linear(4, 8)
            self.c = nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x) @ self.w  # rows of w meet a's channels, columns make new ones ...
            return self.c(h @ self.w.t())  # ... and here the other way round

    model = TwoWays().eval()
    x = torch.randn(3, 4)
    pruned = ps.prune(model, x, sparsity=0.5)
    assert pruned(x).shape == (3, 2)
    w = pruned.w
    assert w.shape[0] == w.shape[1]  # never cut one tensor two ways


def test_channel_shuffle_and_chunk():
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=4).eval()
    report = ps.prune_(model, X, sparsity=0.5, ignore=[model.fc])
    assert report.prunable_fraction == 1.0 and model(X).shape == (2, 4)


@pytest.mark.parametrize("engine", ["record", "fx"])
def test_both_engines_give_the_same_groups_where_fx_traces(engine):
    from prunekit.models import ResNetStyle

    model = ResNetStyle(widths=(8, 16, 32)).eval()
    x = torch.randn(2, 1, 28, 28)
    groups = ps.groups(model, x, ignore=[model.fc], engine=engine)
    assert sorted(len(g) for g in groups) == [8, 8, 8, 16, 16, 16, 32, 32, 32]
