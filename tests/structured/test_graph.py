"""The dependency graph: coupled groups across residuals, concat, flatten, depthwise, norms, and errors."""

import pytest
import torch
from torch import nn

import prunekit.structured as ps
from prunekit.models import ResNetStyle
from prunekit.models.structured_zoo import DenseNetStyle, GroupedStyle, MobileNetV2Style, VGGStyle

X = torch.randn(2, 1, 28, 28)


def _by_names(groups):
    return {tuple(g.names): g for g in groups}


def test_residual_stage_is_one_group_with_stem_and_downsample():
    model = ResNetStyle().eval()
    groups = ps.groups(model, X, ignore=[model.fc])
    assert sorted(len(g) for g in groups) == [32, 32, 32, 64, 64, 64, 128, 128, 128]
    stage1 = next(g for g in groups if "stem.0" in g.names)
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(stage1.names)
    stage3 = next(g for g in groups if "fc" in g.names)
    assert {("fc", "in"), ("layer3.0.downsample.0", "out")} <= {(m.name, m.role) for m in stage3.members}


def test_output_and_ignored_layers_are_not_prunable():
    model = ResNetStyle().eval()
    for g in ps.groups(model, X):  # without ignore, fc's outputs are the model's output: pinned anyway
        assert ("fc", "out") not in {(m.name, m.role) for m in g.members}


def test_depthwise_channels_follow_the_expand_conv():
    groups = ps.groups(MobileNetV2Style().eval(), X)
    block0 = next(g for g in groups if "blocks.0.block.3" in g.names)
    roles = {(m.name, m.role) for m in block0.members}
    assert {("blocks.0.block.0", "out"), ("blocks.0.block.3", "dw"), ("blocks.0.block.6", "in")} <= roles
    assert len(block0) == 64


def test_concatenation_keeps_each_source_its_own_group():
    groups = ps.groups(DenseNetStyle().eval(), X)
    stem = next(g for g in groups if "stem" in g.names)
    assert len(stem) == 16
    layer0_out = next(g for g in groups if ("block.0.body.5", "out") in {(m.name, m.role) for m in g.members})
    assert len(layer0_out) == 8
    # the transition conv reads the concatenation: both sources appear in it, at different positions
    pos_stem = stem.where[("transition.2", "in")]
    pos_l0 = layer0_out.where[("transition.2", "in")]
    assert sorted(int(p) for u in stem.units for p in pos_stem[u]) == list(range(16))
    assert sorted(int(p) for u in layer0_out.units for p in pos_l0[u]) == list(range(16, 24))


def test_flatten_ties_each_channel_to_its_block_of_linear_inputs():
    groups = ps.groups(VGGStyle().eval(), X)
    last = next(g for g in groups if ("features.8", "out") in {(m.name, m.role) for m in g.members})
    pos = last.where[("classifier.0", "in")]
    assert all(len(pos[u]) == 9 for u in last.units)  # 3×3 feature map per channel
    assert list(pos[last.units[1]]) == list(range(9, 18))


def test_groupnorm_removes_whole_groups_and_grouped_conv_is_kept_whole():
    model = GroupedStyle().eval()
    names = {n for g in ps.groups(model, X) for n in g.names}
    assert "conv1" not in names and "conv2" not in names  # chunk feeds a grouped conv: kept whole
    gn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(4, 8), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    gn(X)
    gn.eval()
    groups = ps.groups(gn, X)
    g = next(g for g in groups if "0" in g.names)
    assert len(g) == 4 and all(len(g.where[("0", "out")][u]) == 2 for u in g.units)
    pruned = ps.prune(gn, X, ratio=0.5)
    assert pruned[1].num_groups == 2 and pruned[1].num_channels == 4 and pruned[0].out_channels == 4


class Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.roll(self.conv(x), 1, dims=1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Roll()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_unknown_operation_is_an_error_naming_it_and_its_module():
    model = Net().eval()
    with pytest.raises(ps.UnsupportedOperation, match=r"'roll'.*'body'"):
        ps.prune(model, X, ratio=0.5)
    # the escape hatch the message names: keep that module whole
    pruned = ps.prune(model, X, ratio=0.5, ignore=[model.body])
    assert pruned.body.conv.out_channels == 4


class Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.c(self.b(y[:, :4]) + y[:, 4:])


def test_slices_along_channels_pin_them_so_the_model_stays_correct():
    model = Sliced().eval()
    names = {n for g in ps.groups(model, X) for n in g.names}
    assert "a" not in names and "b" not in names and "c" not in names
    assert torch.equal(ps.prune(model, X, ratio=0.5)(X), model(X))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mid = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.out = nn.Linear(32, 3)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.mha(h, h, h)[0]
        return self.out(self.norm(self.act(self.mid(h))))


def test_multihead_attention_width_is_kept_and_the_rest_prunes():
    model = Attn().eval()
    x = torch.randn(2, 5, 6)
    groups = ps.groups(model, x)
    assert [g.names for g in groups] == [["mid", "norm", "out"]]
    pruned = ps.prune(model, x, ratio=0.5)
    assert pruned.mid.out_features == 16 and pruned.norm.normalized_shape == (16,)
    assert pruned(x).shape == (2, 5, 3)


def test_dict_inputs_and_tracing_failures():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x, scale=None):
            return self.b(self.a(x)) if scale is None else self.b(self.a(x)) * scale

    model = Kw().eval()
    pruned = ps.prune(model, {"x": torch.randn(3, 4)}, ratio=0.5)
    assert pruned.a.out_features == 4

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else -self.a(x)

    with pytest.raises(ps.UnsupportedOperation, match="torch.fx could not trace"):
        ps.prune(Branchy(), torch.randn(3, 4), ratio=0.5)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3)))))).view(x.size(0), -1, 1, 1)
        return self.head(y * s)


def test_squeeze_excite_gate_is_cut_with_the_channels_it_scales():
    model = SqueezeExcite().eval()
    groups = ps.groups(model, X)
    roles = {(m.name, m.role) for g in groups for m in g.members if ("conv", "out") in
             {(k.name, k.role) for k in g.members}}
    assert {("conv", "out"), ("fc1", "in"), ("fc2", "out"), ("head", "in")} <= roles
    pruned = ps.prune(model, X, ratio=0.5)
    assert pruned.conv.out_channels == pruned.fc2.out_features == pruned.head.in_channels == 4
    assert pruned(X).shape == (2, 2, 28, 28)
