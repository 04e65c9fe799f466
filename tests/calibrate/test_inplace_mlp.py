import copy

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.calibrate.onepass as onepass
from prunekit.calibrate.inplace_mlp import inplace_gated_mlps, is_llama_style_mlp
from prunekit.models.hf import tiny_model

IDS = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))


class _OtherOrder(nn.Module):
    """The same parts as LlamaMLP, another computation: must keep its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_llama_style_mlps_are_recognised_and_give_the_same_numbers_in_place(family):
    model = tiny_model(family, hidden=64, layers=1)
    mlp = model.model.layers[0].mlp
    assert is_llama_style_mlp(mlp)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want = mlp(x)
        with inplace_gated_mlps(model) as n:
            assert n == 1 and "forward" in vars(mlp)
            got = mlp(x)
    assert torch.equal(got, want)  # the same operations on the same values
    assert "forward" not in vars(mlp)


def test_other_mlps_keep_their_forward():
    other = _OtherOrder()
    assert not is_llama_style_mlp(other)
    gpt2 = tiny_model("gpt2", hidden=64, layers=1)
    with inplace_gated_mlps(gpt2) as n, inplace_gated_mlps(other) as m:
        assert n == 0 and m == 0


def test_with_gradients_the_class_forward_runs_and_gradients_flow():
    mlp = tiny_model("llama", hidden=64, layers=1).model.layers[0].mlp
    x = torch.randn(2, 3, 64, requires_grad=True)
    with inplace_gated_mlps(mlp):
        mlp(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_forward_is_restored_after_an_error():
    model = tiny_model("llama", hidden=64, layers=2)
    with pytest.raises(RuntimeError, match="boom"):
        with inplace_gated_mlps(model):
            raise RuntimeError("boom")
    assert all("forward" not in vars(layer.mlp) for layer in model.model.layers)


def test_one_pass_sparsegpt_gives_the_same_weights_with_and_without_it(monkeypatch):
    base = tiny_model("llama", hidden=64, layers=2)
    fast, plain = copy.deepcopy(base), copy.deepcopy(base)
    pk.prune_(fast, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=4, progress=False)
    used = []

    def none(block):
        used.append(block)
        return inplace_gated_mlps(nn.Module())  # patches nothing

    monkeypatch.setattr(onepass, "inplace_gated_mlps", none)
    pk.prune_(plain, "sparsegpt", 0.5, calibration=IDS, sequential="layer", batch_size=4, progress=False)
    assert len(used) == 2
    for (name, a), (_, b) in zip(pk.masked_modules(fast), pk.masked_modules(plain)):
        assert torch.equal(a.weight, b.weight), name
