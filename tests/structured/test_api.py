"""prune / prune_ on the CNN zoo: exactness at sparsity 0, zero channels, shapes, save/load, reports, the
old names, importances, configs and the check that keeps what a model cannot lose."""

import copy
import io

import pytest
import torch
from torch import nn

import prunekit.structured as ps
from prunekit.metrics.summary import summary
from prunekit.models import ResNetStyle
from prunekit.models.structured_zoo import DenseNetStyle, GroupedStyle, MobileNetV2Style, VGGStyle

from tests.tolerances import tol

ZOO = [ResNetStyle, MobileNetV2Style, VGGStyle, DenseNetStyle, GroupedStyle]
X = torch.randn(2, 1, 28, 28)


def _small(cls):
    return cls(widths=(8, 16, 32)) if cls is ResNetStyle else cls()


@pytest.mark.parametrize("cls", ZOO)
def test_sparsity_zero_gives_exactly_the_same_outputs(cls):
    model = _small(cls).eval()
    pruned = ps.prune(model, X, sparsity=0.0)
    assert torch.equal(pruned(X), model(X))
    assert summary(pruned).params == summary(model).params


@pytest.mark.parametrize("cls", ZOO)
def test_half_pruned_model_is_smaller_runs_backward_and_reloads(cls):
    model = _small(cls).eval()
    before = summary(model, X)
    pruned = ps.prune(model, X, sparsity=0.5)
    after = summary(pruned, X)
    assert after.params < before.params and after.macs < before.macs
    assert summary(model, X).params == before.params  # the original is untouched
    pruned.train()
    out = pruned(X)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
    pruned.eval()
    buf = io.BytesIO()
    torch.save(pruned, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(X), pruned(X))


def test_resnet_half_sparsity_halves_every_width_and_quarters_macs():
    model = ResNetStyle().eval()
    pruned = ps.prune(model, X, sparsity=0.5, ignore=[model.fc])
    assert pruned.stem[0].out_channels == 16
    assert pruned.layer2[0].conv1.out_channels == 32 and pruned.layer3[1].conv2.out_channels == 64
    assert pruned.fc.in_features == 64 and pruned.fc.out_features == 10
    ratio = summary(model, X).macs / summary(pruned, X).macs
    assert 3.8 < ratio < 4.1


def test_in_place_prune_changes_the_model_itself_and_reports():
    model = VGGStyle().eval()
    before = summary(model, X)
    report = ps.prune_(model, X, sparsity=0.5)
    assert isinstance(report, ps.StructuredReport)
    assert model.features[0].out_channels == 8 and model.features[1].num_features == 8
    assert model(X).shape == (2, 10)
    assert report.params_before == before.params and report.params_after == summary(model).params
    assert report.prunable_fraction == 1.0 and report.channels_removed_fraction == pytest.approx(0.5, abs=0.02)
    assert 0.7 < report.macs_removed < 0.8 and not report.warnings
    assert "MACs" in str(report) and report.to_dict()["macs_removed"] == report.macs_removed


def test_ratio_is_a_deprecated_name_of_sparsity():
    from prunekit.core.deprecation import PrunekitDeprecationWarning

    model = VGGStyle().eval()
    with pytest.warns(PrunekitDeprecationWarning, match="ratio= is deprecated, use sparsity="):
        pruned = ps.prune(model, X, ratio=0.5)
    assert pruned.features[0].out_channels == 8
    with pytest.raises(TypeError, match="not both"):
        ps.prune(model, X, ratio=0.5, sparsity=0.5)
    with pytest.warns(PrunekitDeprecationWarning, match="allocation='global'"):
        ps.prune(model, X, sparsity=0.5, global_pruning=True)


def test_removing_all_zero_channels_changes_no_output():
    model = VGGStyle().eval()
    conv, bn, nxt = model.features[0], model.features[1], model.features[4]
    dead = [1, 5, 6, 11]
    with torch.no_grad():
        for c in dead:
            conv.weight[c] = 0
            conv.bias[c] = 0
            bn.weight[c] = 0
            bn.bias[c] = 0
            nxt.weight[:, c] = 0
    expected = model(X)
    # ratio 4/16 removes exactly the four units whose weights are all zero (their l2 score is 0)
    only_first = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not conv]
    pruned = ps.prune(model, X, sparsity=4 / 16, ignore=only_first)
    assert pruned.features[0].out_channels == 12
    kept = [c for c in range(16) if c not in dead]
    assert torch.equal(pruned.features[0].weight, model.features[0].weight[kept])
    # 12 channels where there were 16 (four of them zero): the next layers' sums are the same terms, but a
    # narrower kernel may group them in another order; along the path about 9 + 144 + 288 + 576 + 64 terms
    torch.testing.assert_close(pruned(X), expected, **tol(torch.float32, k=9 + 144 + 288 + 576 + 64))


@pytest.mark.parametrize("cls", ZOO)
def test_channel_counts_never_reach_zero(cls):
    model = _small(cls).eval()
    pruned = ps.prune(model, X, sparsity=0.99)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels >= 1 and m.out_channels >= 1
        if isinstance(m, nn.Linear):
            assert m.in_features >= 1 and m.out_features >= 1
    assert pruned(X).shape == (2, 10)


def test_round_to_keeps_hardware_friendly_counts():
    model = ResNetStyle().eval()
    pruned = ps.prune(model, X, sparsity=0.6, round_to=8, ignore=[model.fc])
    widths = {m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)}
    assert widths == {16, 24, 48}  # 32→12.8→16, 64→25.6→24, 128→51.2→48


def test_global_allocation_removes_the_sparsity_overall_but_unevenly():
    model = ResNetStyle(widths=(8, 16, 32)).eval()
    with torch.no_grad():
        # two dominant units make the rest of this group look unimportant after per-group normalization
        model.layer3[0].conv1.weight[:2].mul_(1000)
        model.layer3[0].conv2.weight[:, :2].mul_(1000)
    groups = ps.groups(model, X, ignore=[model.fc])
    total = sum(len(g) for g in groups)
    pruned = ps.prune(model, X, sparsity=0.5, allocation="global", ignore=[model.fc])
    after = sum(len(g) for g in ps.groups(pruned, X, ignore=[pruned.fc]))
    assert after == total - total // 2
    assert 2 <= pruned.layer3[0].conv1.out_channels < 16  # uneven: this group lost more than half


def test_target_macs_removes_that_fraction_of_macs():
    model = ResNetStyle(widths=(8, 16, 32)).eval()
    before = summary(model, X).macs
    pruned = ps.prune(model, X, sparsity=0.5, target="macs", ignore=[model.fc])
    after = summary(pruned, X).macs
    assert 0.4 < after / before <= 0.5


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random", "activation"])
def test_every_importance_prunes(importance):
    model = MobileNetV2Style().eval()
    pruned = ps.prune(model, X, sparsity=0.3, importance=importance)
    assert summary(pruned).params < summary(model).params


def test_taylor_takes_loss_fn_of_outputs_and_targets_on_data_batches():
    model = VGGStyle().eval()
    y = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="loss_fn"):
        ps.prune(model, X, sparsity=0.5, importance="taylor")
    with pytest.raises(ValueError, match="data="):
        ps.prune(model, X, sparsity=0.5, importance="taylor", loss_fn=nn.functional.cross_entropy)
    data = [(X, y), (X.flip(0), y.flip(0))]
    pruned = ps.prune(model, X, sparsity=0.5, importance="taylor", loss_fn=nn.functional.cross_entropy, data=data)
    assert pruned.features[0].out_channels == 8
    # the same scores as the importance computed by hand: (Σ over the unit of mean g·w)²
    one = ps.prune(model, X, sparsity=0.5, importance={"importance": "taylor", "batches": 1},
                   loss_fn=nn.functional.cross_entropy, data=data)
    assert one.features[0].out_channels == 8
    from prunekit.core.deprecation import PrunekitDeprecationWarning

    with pytest.warns(PrunekitDeprecationWarning, match="loss_fn\\(model\\) is deprecated"):
        ps.prune(model, X, sparsity=0.5, importance="taylor",
                 loss_fn=lambda m: nn.functional.cross_entropy(m(X), y))


def test_a_config_and_the_keywords_are_the_same_call():
    cfg = ps.StructuredConfig(sparsity=0.5, importance="l1", ignore=["fc"], round_to=4)
    assert ps.StructuredConfig.from_yaml(cfg.to_yaml()) == cfg
    a = ps.prune(ResNetStyle().eval(), X, cfg)
    b = ps.prune(ResNetStyle().eval(), X, sparsity=0.5, importance="l1", ignore=["fc"], round_to=4)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    c = ps.prune(ResNetStyle().eval(), X, config={"sparsity": 0.5, "importance": {"importance": "l1"},
                                                  "ignore": ["fc"], "round_to": 4})
    assert [p.shape for p in c.parameters()] == [p.shape for p in a.parameters()]
    assert ps.prune(ResNetStyle().eval(), X, config=cfg, sparsity=0.25).stem[0].out_channels == 24  # keywords win


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"importance": "l3"}, "importance"),
    ({"target": "flops"}, "target"), ({"round_to": 0}, "round_to"),
])
def test_bad_arguments_are_refused_before_anything_changes(kwargs, match):
    model = VGGStyle().eval()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        ps.prune_(model, X, **kwargs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_masked_model_must_be_finalized_first():
    from prunekit.core.mask import set_mask_
    model = VGGStyle().eval()
    set_mask_(model.features[0], torch.ones_like(model.features[0].weight, dtype=torch.bool))
    with pytest.raises(ValueError, match="finalize_"):
        ps.prune(model, X, sparsity=0.5)


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.conv(x)).view(-1, 8 * 28 * 28))


def test_a_hard_coded_channel_count_keeps_that_layer_and_prunes_the_rest():
    model = HardCoded().eval()
    report = ps.prune_(model, X, sparsity=0.5)
    assert model.conv2.out_channels == 8 and model.fc.in_features == 8 * 28 * 28  # view(-1, 6272) needs all 8
    assert model.conv.out_channels == 4 and model(X).shape == (2, 10)
    assert report.repaired and "view" in report.repaired[0][1]


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if y.shape[1] != 8:  # refuses any other width, outside any torch call
            raise ValueError("expects 8 channels")
        return self.fc(y)


def test_a_model_that_refuses_every_change_is_left_untouched():
    model = Broken().eval()
    state = copy.deepcopy(model.state_dict())
    report = ps.prune_(model, X, sparsity=0.5)
    assert report.channels_removed == 0 and report.repaired and report.warnings
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
