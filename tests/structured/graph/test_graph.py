"""The recorded dependency graph: coupled groups across residuals, concat, flatten, depthwise and grouped
convolutions, norms, attention, control flow, and unknown operations."""

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
    pos_stem = stem.positions("transition.2", "in")
    pos_l0 = layer0_out.positions("transition.2", "in")
    assert sorted(int(p) for u in stem.units for p in pos_stem[u]) == list(range(16))
    assert sorted(int(p) for u in layer0_out.units for p in pos_l0[u]) == list(range(16, 24))


def test_flatten_ties_each_channel_to_its_block_of_linear_inputs():
    groups = ps.groups(VGGStyle().eval(), X)
    last = next(g for g in groups if ("features.8", "out") in {(m.name, m.role) for m in g.members})
    pos = last.positions("classifier.0", "in")
    assert all(len(pos[u]) == 9 for u in last.units)  # 3×3 feature map per channel
    assert list(pos[last.units[1]]) == list(range(9, 18))


def test_groupnorm_removes_whole_groups_and_grouped_conv_keeps_its_groups():
    model = GroupedStyle().eval()
    groups = ps.groups(model, X)
    conv2 = next(g for g in groups if ("conv2", "out") in g.roles)  # 16 outputs in 4 groups: 4 units
    assert len(conv2) == 4 and all(len(conv2.positions("conv2", "out")[u]) == 4 for u in conv2.units)
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.conv2.groups == 4 and pruned.conv2.out_channels == 8 and pruned.conv3.in_channels == 8
    assert pruned(X).shape == (2, 10)
    gn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(4, 8), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    gn(X)
    gn.eval()
    groups = ps.groups(gn, X)
    g = next(g for g in groups if "0" in g.names)
    assert len(g) == 4 and all(len(g.positions("0", "out")[u]) == 2 for u in g.units)
    pruned = ps.prune(gn, X, sparsity=0.5)
    assert pruned[1].num_groups == 2 and pruned[1].num_channels == 4 and pruned[0].out_channels == 4


class Diff(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.diff(self.conv(x), dim=-1)  # an operation the graph has no rule for


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Diff()
        self.head = nn.Conv2d(4, 2, 1)
        self.tail = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.tail(self.head(self.body(x)))


def test_unknown_operation_pins_its_channels_and_says_so():
    model = Net().eval()
    with pytest.warns(ps.StructuredPruningWarning, match=r"'diff' in 'body'"):
        pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.body.conv.out_channels == 4 and pruned.head.out_channels == 1  # the rest still prunes
    with pytest.raises(ps.UnsupportedOperation, match=r"'diff' in module 'body'.*ignore="):
        ps.prune(model, X, sparsity=0.5, strict=True)
    # the escape hatch the message names: keep that module whole, silently
    pruned = ps.prune(model, X, sparsity=0.5, ignore=[model.body], strict=True)
    assert pruned.body.conv.out_channels == 4


def test_roll_along_space_is_followed_and_along_channels_pins():
    class Rolled(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.a, self.b, self.dims = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 2, 1), dims

        def forward(self, x):
            return self.b(torch.roll(self.a(x), (2,) * len(self.dims), dims=self.dims))

    assert ps.prune(Rolled((2, 3)).eval(), X, sparsity=0.5).a.out_channels == 4  # Swin's shifted windows
    assert ps.prune(Rolled((1,)).eval(), X, sparsity=0.5).a.out_channels == 8


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "cumsum", "cumprod", "logcumsumexp", "normalize"])
def test_ops_along_space_are_followed_and_along_the_channels_pin(op):
    class Along(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.a, self.b, self.dim = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 2, 1), dim

        def forward(self, x):
            y = self.a(x)
            return self.b(F.normalize(y, dim=self.dim) if op == "normalize" else getattr(torch, op)(y, dim=self.dim))

    from torch.nn import functional as F

    assert ps.prune(Along(-1).eval(), X, sparsity=0.5).a.out_channels == 4  # along the width: channels apart
    # along the channels every output depends on every channel: removing some would change the kept ones
    model = Along(1).eval()
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.a.out_channels == 8
    torch.testing.assert_close(pruned(X), model(X))


def test_softmax_over_stacked_paths_keeps_each_channel_apart():
    # SK-Net's attention: one conv gives paths × channels, viewed (b, paths, c, h, w), softmax over the paths;
    # channel c's weights depend only on channel c of every path, so the channels stay prunable
    class Paths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.sel, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            w = torch.softmax(self.sel(y).view(x.shape[0], 2, -1, *y.shape[2:]), dim=1)
            return self.b((w * torch.stack([y, 2 * y], 1)).sum(1))

    model = Paths().eval()
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.a.out_channels == 4 and pruned.sel.out_channels == 8
    assert pruned(X).shape == model(X).shape


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
    assert torch.equal(ps.prune(model, X, sparsity=0.5)(X), model(X))


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


def test_multihead_attention_loses_the_same_positions_in_every_head():
    model = Attn().eval()
    x = torch.randn(2, 5, 6)
    pruned = ps.prune(model, x, sparsity=0.5)
    assert pruned.mha.embed_dim == 8 and pruned.mha.head_dim == 2 and pruned.mha.num_heads == 4
    assert pruned.inp.out_features == 8 and pruned.mid.in_features == 8 and pruned.mid.out_features == 16
    assert pruned(x).shape == (2, 5, 3)
    with torch.no_grad():  # at sparsity 0 nothing changes
        assert torch.equal(ps.prune(model, x, sparsity=0.0)(x), model(x))


def test_dict_inputs_python_control_flow_and_the_fx_engine():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x, scale=None):
            return self.b(self.a(x)) if scale is None else self.b(self.a(x)) * scale

    model = Kw().eval()
    pruned = ps.prune(model, {"x": torch.randn(3, 4)}, sparsity=0.5)
    assert pruned.a.out_features == 4

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h if h.sum() > 0 else -h)  # control flow on a tensor: fx cannot trace it

    x = torch.randn(3, 4)
    assert ps.prune(Branchy().eval(), x, sparsity=0.5).a.out_features == 4
    with pytest.raises(ps.UnsupportedOperation, match="torch.fx could not trace"):
        ps.prune(Branchy().eval(), x, sparsity=0.5, engine="fx")
    assert ps.prune(Kw().eval(), torch.randn(3, 4), sparsity=0.5, engine="fx").a.out_features == 4


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
    roles = next(g.roles for g in groups if ("conv", "out") in g.roles)
    assert {("conv", "out"), ("fc1", "in"), ("fc2", "out"), ("head", "in")} <= roles
    pruned = ps.prune(model, X, sparsity=0.5)
    assert pruned.conv.out_channels == pruned.fc2.out_features == pruned.head.in_channels == 4
    assert pruned(X).shape == (2, 2, 28, 28)


def test_a_rule_that_fails_on_a_call_pins_and_warns(monkeypatch):
    import prunekit.structured.graph.rules as propagate

    real = propagate.dispatch

    def flaky(rec, func, name, args, kwargs, result):
        if name.endswith("diff"):
            raise IndexError("rule does not fit")
        return real(rec, func, name, args, kwargs, result)

    monkeypatch.setattr(propagate, "dispatch", flaky)
    model = Net().eval()
    with pytest.warns(ps.StructuredPruningWarning, match=r"could not follow.*diff in body \(its rule failed: IndexError"):
        report = ps.prune_(model, X, sparsity=0.5)
    assert model.body.conv.out_channels == 4 and model.head.out_channels == 1
    assert any("could not be followed" in why for why, _ in report.pinned)
    with pytest.raises(ps.UnsupportedOperation, match=r"cannot follow .*diff.* in module 'body'"):
        ps.prune(Net().eval(), X, sparsity=0.5, strict=True)
