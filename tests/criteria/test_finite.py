"""No silent wrong result: a NaN or inf anywhere a score comes from is an error naming the criterion
(or method) and the layer, and the model is left untouched."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.core.finite import NonFiniteError, check_finite
from prunekit.core.scope import select_targets
from prunekit.criteria.base import Criterion, ScoreContext, score_targets
from prunekit.models.hf import tiny_model


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


def _data(poison=None, n=2):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(n)]
    if poison is not None:
        data[1][0][2, 3] = poison
    return data


def _no_masks(model):
    return list(pk.masked_modules(model)) == []


ALL = ["magnitude", "random", "snip", "grasp", "synflow", "taylor"]


def _kwargs(method, data=None):
    return dict(data=data or _data(), loss_fn=F.cross_entropy, example_inputs=torch.randn(2, 6), progress=False)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_weight_is_an_error_for_every_criterion(method, bad):
    model = _mlp()
    with torch.no_grad():
        model[2].weight[1, 1] = bad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"weights of layer '2' hold 1 (NaN|infinite) value.*" + method):
        pk.prune_(model, method, 0.5, **_kwargs(method))
    assert _no_masks(model)
    assert all(torch.equal(v, before[k]) or torch.isnan(v).any() for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["snip", "grasp", "taylor"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_in_a_data_batch_is_an_error_naming_the_batch(method, bad):
    model = _mlp()
    # a NaN input makes the loss NaN; an inf one may saturate the tanh, and then the gradients are NaN
    match = "data batch 1 gives a loss of nan" if math.isnan(bad) else f"data batch 1 gives a loss|{method} scores of layer"
    with pytest.raises(NonFiniteError, match=match):
        pk.prune_(model, method, 0.5, **_kwargs(method, _data(poison=bad)))
    assert _no_masks(model)


class _Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x.abs())


@pytest.mark.parametrize("method", ["snip", "taylor"])
def test_nan_gradients_with_a_finite_loss_are_an_error_naming_the_criterion_and_layer(method):
    # sqrt(|x|) has an infinite slope at 0: the loss is finite, the gradients are not.
    model = _mlp()
    model[1] = _Sqrt()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    with pytest.raises(NonFiniteError, match=f"{method} scores of layer '0' hold"):
        pk.prune_(model, method, 0.5, **_kwargs(method))
    assert _no_masks(model)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_any_criterion_returning_non_finite_scores_is_caught_before_ranking(bad):
    model = _mlp()
    targets = select_targets(model)

    def broken(model, targets, ctx):
        scores = {t.name: torch.rand(t.shape) for t in targets}
        scores["2"][0, 0] = bad
        return scores

    with pytest.raises(NonFiniteError, match="mine scores of layer '2' hold 1"):
        score_targets(Criterion("mine", broken), model, targets, ScoreContext())


def test_empty_batches_are_errors():
    model = _mlp()
    with pytest.raises(ValueError, match=r"synflow needs example_inputs with at least one example; got shape \(0, 6\)"):
        pk.prune_(model, "synflow", 0.5, example_inputs=torch.zeros(0, 6), progress=False)
    empty = [(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))]
    for method in ("snip", "taylor", "grasp"):
        with pytest.raises(ValueError, match=r"data batch 0 holds no examples \(inputs of shape \(0, 6\)\)"):
            pk.prune_(model, method, 0.5, data=empty, loss_fn=F.cross_entropy, progress=False)
    assert _no_masks(model)


def test_synflow_on_a_deep_net_does_not_overflow_float32():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        lin = nn.Linear(64, 64)
        nn.init.constant_(lin.weight, 30.0)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers)  # synaptic flow ≈ 64^11·30^12·30 ≈ 4e38, past float32's largest number
    scores = pk.CRITERIA.get("synflow").fn(model, select_targets(model), ScoreContext(example_inputs=torch.ones(1, 64)))
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert max(float(s.max()) for s in scores.values()) == pytest.approx(1.0)


def _calib(n=4, seqlen=16, vocab=128):
    return torch.randint(0, vocab, (n, seqlen))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_nan_weights_before_a_calibrated_method_are_an_error(method):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = math.nan
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"weights of layer 'model.layers.1.mlp.up_proj' hold 1 NaN.*" + method):
        pk.prune_(model, method, 0.5, calibration=_calib(), progress=False)
    assert _no_masks(model)
    after = model.state_dict()
    assert all(torch.equal(torch.nan_to_num(after[k]), torch.nan_to_num(v)) for k, v in state.items())
    assert int(torch.isnan(model.model.layers[1].mlp.up_proj.weight).sum()) == 1  # not spread by SparseGPT


@pytest.mark.parametrize("method, allocation, what", [
    ("wanda", "uniform", "wanda scores"), ("sparsegpt", "uniform", "sparsegpt's Hessian"),
    ("wanda", "owl", "wanda scores"), ("sparsegpt", "owl", "wanda scores"),  # OWL's dense scoring pass
])
def test_non_finite_activations_are_an_error_naming_the_layer(method, allocation, what):
    model = tiny_model("llama")
    with torch.no_grad():  # not a pruning target: the weight check passes, the activations do not
        model.model.layers[0].input_layernorm.weight[0] = math.inf
    with pytest.raises(NonFiniteError, match=f"{what}.* of layer 'model.layers.0.self_attn.(q|k|v)_proj' hold"):
        pk.prune_(model, method, 0.5, allocation=allocation, calibration=_calib(), progress=False)
    assert _no_masks(model)


def test_check_finite_counts_what_it_found():
    with pytest.raises(NonFiniteError, match=r"x of layer 'l' hold 2 NaN and 1 infinite value\(s\) of 4"):
        check_finite(torch.tensor([math.nan, math.nan, math.inf, 1.0]), "x", "l")
    check_finite(torch.tensor([1, 2]), "ints", "l")  # integers are always finite
