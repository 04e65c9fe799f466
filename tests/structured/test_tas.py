"""TAS: channel-wise interpolation, Gumbel sampling, the expected-MACs and cost terms, argmax extraction and the
built shape, each against a hand-computed small case; the search and the distillation end to end on tiny data."""

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from prunekit.core.config import ConfigError
from prunekit.metrics.macs import count_macs
from prunekit.models import SmallCNN
from prunekit.train import fit
from prunekit.structured.tas import (SEARCHES, ChainCNN, TASConfig, TASSearch, chain_macs, channel_interpolate,
                                     cost_loss, gumbel_pick, search_widths, tas, uniform_widths)


def _map(values):
    """A (1, C, 2, 2) map whose channel c is the constant values[c]."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, len(values), 2, 2)


def test_cwi_of_a_four_channel_map_to_two_and_three_channels():
    x = _map([1.0, 2.0, 3.0, 5.0])
    # 4 -> 2: channel j averages inputs [2j, 2j+2)
    assert channel_interpolate(x, 2)[0, :, 0, 0].tolist() == [1.5, 4.0]
    # 4 -> 3: j averages inputs floor(4j/3) .. ceil(4(j+1)/3)-1: {0,1}, {1,2}, {2,3}
    assert channel_interpolate(x, 3)[0, :, 0, 0].tolist() == [1.5, 2.5, 4.0]
    # and back up, as TAS aligns a 2- or 3-channel candidate with the 4-channel layer:
    assert channel_interpolate(_map([1.0, 3.0]), 4)[0, :, 0, 0].tolist() == [1.0, 1.0, 3.0, 3.0]
    assert channel_interpolate(_map([1.0, 3.0, 7.0]), 4)[0, :, 0, 0].tolist() == [1.0, 2.0, 5.0, 7.0]
    assert channel_interpolate(x, 4) is x
    assert channel_interpolate(x, 3).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="channels must be a positive whole number"):
        channel_interpolate(x, 0)


def test_gumbel_pick_draws_distinct_candidates_whose_weights_sum_to_one_and_carry_gradient():
    logits = torch.tensor([0.0, 1.0, -1.0, 0.5], requires_grad=True)
    idx, w = gumbel_pick(logits, 1.0, 2, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 2 and float(w.detach().sum()) == pytest.approx(1.0, abs=1e-6)  # float32, 2 terms
    (w * torch.tensor([1.0, 2.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # a near point mass is drawn first every time
    sharp = torch.tensor([0.0, 50.0, 0.0])
    gen = torch.Generator().manual_seed(1)
    assert all(gumbel_pick(sharp, 0.1, 1, gen)[0].tolist() == [1] for _ in range(20))


def _two_layer_search():
    net = ChainCNN([[4], [6]])
    search = TASSearch(net, [0.5, 1.0], image_size=8)
    with torch.no_grad():
        search.width_logits[0].copy_(torch.tensor([0.0, math.log(3.0)]))  # p = (1/4, 3/4) over {2, 4}
        search.width_logits[1].zero_()  # p = (1/2, 1/2) over {3, 6}
        search.depth_logits[0].zero_()
        search.depth_logits[1].zero_()
    return search


def test_expected_macs_of_a_two_layer_net_by_hand():
    search = _two_layer_search()
    assert search.candidates == [[[2, 4]], [[3, 6]]]
    # E[C1] = 2/4 + 4·3/4 = 3.5, E[C2] = 4.5; conv1 at 8×8: 9·64·1·3.5; conv2 at 4×4: 9·16·3.5·4.5; head 4.5·10
    want = 9 * 64 * 1 * 3.5 + 9 * 16 * 3.5 * 4.5 + 4.5 * 10
    assert want == 4329.0
    # the logit log 3 is stored in float32 (error ≤ 6.6e-8), which moves p by ≤ 1.3e-8 and E[C1] by ≤ 2.6e-8:
    # E[MACs] by ≤ (576 + 648)·2.6e-8 ≈ 3.2e-5 (the float64 sum itself adds ~1e-12)
    assert float(search.expected_macs().detach()) == pytest.approx(want, abs=1e-4)
    # the term is differentiable in the logits: more mass on the wide candidate raises it
    search.expected_macs().backward()
    assert search.width_logits[0].grad[1] > 0 > search.width_logits[0].grad[0]


def test_expected_macs_with_a_depth_distribution_by_hand():
    search = TASSearch(ChainCNN([[4, 4]]), [1.0], image_size=4)  # one width each; depth 1 or 2 at p = 1/2
    with torch.no_grad():
        search.depth_logits[0].zero_()
    # layer 1 always runs: 9·16·1·4; layer 2 runs with p = 1/2: 9·16·4·4; the head reads 4 channels either way
    want = 9 * 16 * 4 + 0.5 * 9 * 16 * 4 * 4 + 4 * 10
    assert float(search.expected_macs().detach()) == pytest.approx(want, rel=1e-12)  # float64, exact logits (0)


def test_argmax_widths_and_depths_and_the_built_shape():
    search = _two_layer_search()
    with torch.no_grad():
        search.width_logits[1].copy_(torch.tensor([0.0, 2.0]))
    assert search.searched_widths() == [[4], [6]]  # argmax of (1/4, 3/4) over {2, 4}; of (0.12, 0.88) over {3, 6}
    with torch.no_grad():
        search.width_logits[1].copy_(torch.tensor([1.0, 0.0]))
    assert search.searched_widths() == [[4], [3]]
    deep = TASSearch(ChainCNN([[8, 8], [16, 16]]), [0.25, 0.5, 1.0])
    with torch.no_grad():
        deep.depth_logits[0].copy_(torch.tensor([3.0, 0.0]))  # stage 0 keeps one layer
        deep.depth_logits[1].copy_(torch.tensor([0.0, 3.0]))  # stage 1 keeps two
        deep.width_logits[0].copy_(torch.tensor([0.0, 5.0, 0.0]))  # 4 of 8
        deep.width_logits[2].copy_(torch.tensor([5.0, 0.0, 0.0]))  # 4 of 16
        deep.width_logits[3].copy_(torch.tensor([0.0, 0.0, 5.0]))  # 16 of 16
    widths = deep.searched_widths()
    assert widths == [[4], [4, 16]]
    net = ChainCNN(widths)
    # conv 1·4·9 + BN 2·4, conv 4·4·9 + BN 2·4, conv 4·16·9 + BN 2·16, head 16·10 + 10
    assert sum(p.numel() for p in net.parameters()) == 36 + 8 + 144 + 8 + 576 + 32 + 170
    x = torch.randn(2, 1, 28, 28)
    assert count_macs(net, x[:1]) == chain_macs(widths) == deep.argmax_macs()
    assert net(x).shape == (2, 10)


def test_chain_cnn_matches_small_cnn_in_macs_and_parameters():
    x = torch.randn(1, 1, 28, 28)
    net, small = ChainCNN([[16], [32], [64]]), SmallCNN((16, 32, 64))
    assert count_macs(net, x) == count_macs(small, x) == chain_macs([[16], [32], [64]])
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in small.parameters())


def test_cost_loss_pushes_toward_the_target_band():
    e = torch.tensor(100.0)
    assert float(cost_loss(e, 120.0, 100.0, 0.05)) == pytest.approx(math.log(100.0))  # above: shrink E
    assert float(cost_loss(e, 80.0, 100.0, 0.05)) == pytest.approx(-math.log(100.0))  # below: grow E
    assert float(cost_loss(e, 103.0, 100.0, 0.05)) == 0.0  # inside the band: no pull


def test_uniform_widths_meet_the_macs_of_a_searched_net():
    widths = uniform_widths([[16], [32], [64]], chain_macs([[8], [16], [32]]))
    assert widths == [[8], [16], [32]]


def _data(n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.3 + y.float().reshape(-1, 1, 1, 1)
    return TensorDataset(x, y)


def test_search_moves_the_argmax_network_to_the_macs_target_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = ChainCNN([[8, 8], [16]], classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = search_widths(model, _data(), target=0.5, tolerance=0.25, search_epochs=8, batch_size=32,
                           image_size=8, arch_lr=0.1, cost_weight=5.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # from near-uniform logits, 32 architecture steps of the cost loss must bring the argmax network into the
    # band 50 % · (1 ± 0.25) of the MACs
    assert 0.375 <= report.macs / report.macs_full <= 0.625, report
    assert not report.notes
    assert report.macs == chain_macs(report.widths, 8, 1, 4)
    assert all(abs(sum(p) - 1) < 1e-12 for stage in report.width_probs for p in stage)  # float64 softmax, ≤ 8 terms


def test_tas_end_to_end_builds_and_distils_the_searched_shape():
    torch.manual_seed(0)
    model = ChainCNN([[8], [16]], classes=4)
    data = _data()
    fit(model, data, epochs=10, batch_size=32, progress=False)  # the unpruned teacher, trained
    teacher_acc = float((model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean())
    assert teacher_acc > 0.9
    result = tas(model, data, {"target": 0.5, "search_epochs": 1, "kd_epochs": 6, "batch_size": 32, "image_size": 8})
    assert result.model.widths == result.report.widths
    assert count_macs(result.model, data.tensors[0][:1]) == result.report.macs
    acc = float((result.model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean())
    assert acc > 0.75  # 4 well-separated classes; chance is 0.25
    assert "kd_epochs=0" in tas(model, data, target=0.5, search_epochs=1, kd_epochs=0, batch_size=32,
                                image_size=8).report.notes[-1]


def test_bad_input_is_one_clear_error():
    data = _data(64)
    with pytest.raises(TypeError, match="ChainCNN"):
        tas(SmallCNN((4, 4, 4)), data)
    with pytest.raises(ConfigError, match="unknown option 'targte'"):
        tas(ChainCNN([[4]]), data, targte=0.5)
    with pytest.raises(ConfigError, match="target"):
        TASConfig.parse(target=1.5)
    with pytest.raises(ValueError, match="fewer than one batch"):
        search_widths(ChainCNN([[4]]), data, batch_size=64)
    with pytest.raises(ValueError, match="choices must be fractions"):
        search_widths(ChainCNN([[4]]), data, choices=[0.5, 2.0], batch_size=16)
    with pytest.raises(ValueError, match="widths must be a list of stages"):
        ChainCNN([[4], []])
    assert SEARCHES.config("tas") is TASConfig
    assert TASConfig.from_yaml(TASConfig(target=0.3).to_yaml()) == TASConfig(target=0.3)
