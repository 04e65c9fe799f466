"""DIMAP's module-aware, data-free score (He & Zhou, ICLR 2024) against hand computations."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.allocate import lamp_scores
from prunekit.core.mask import get_mask
from prunekit.criteria.dimap import dimap_scores, module_of, module_role, stage_of


class TwoStages(nn.Module):
    """Two window-attention QKV layers in two stages (timm Swin names): two DIMAP modules."""

    def __init__(self, a: list[float], b: list[float]) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for w in (a, b):
            stage = nn.Module()
            stage.blocks = nn.ModuleList([nn.Module()])
            stage.blocks[0].attn = nn.Module()
            stage.blocks[0].attn.qkv = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                stage.blocks[0].attn.qkv.weight.copy_(torch.tensor(w).reshape(2, 2))
            self.layers.append(stage)
        self.out = nn.Linear(2, 1)

    def forward(self, x):
        for stage in self.layers:
            x = stage.blocks[0].attn.qkv(x)
        return self.out(x)


A = [4.0, 3.0, 2.0, 1.0]   # stage 0: large weights
B = [0.6, 0.5, 0.4, 0.1]   # stage 1: a tenth of the scale


def test_score_by_hand():
    # Imp(w) = w² / Σ_{|v| ≥ |w|} v² within the module.
    # A: squares 16, 9, 4, 1 → 16/16, 9/25, 4/29, 1/30.  B: .36, .25, .16, .01 → .36/.36, .25/.61, .16/.77, .01/.78
    got = dimap_scores({"a": torch.tensor(A), "b": torch.tensor(B)}, {"a": "A", "b": "B"})
    # float32 results of float64 ratios of ≤ 4-term sums: a few float32 ulps
    assert torch.allclose(got["a"], torch.tensor([1.0, 9 / 25, 4 / 29, 1 / 30]), rtol=1e-6, atol=0)
    assert torch.allclose(got["b"], torch.tensor([1.0, 0.25 / 0.61, 0.16 / 0.77, 0.01 / 0.78]), rtol=1e-6, atol=0)


def test_ties_share_a_score_and_a_zero_module_scores_zero():
    got = dimap_scores({"a": torch.tensor([2.0, -2.0, 1.0]), "z": torch.zeros(3)}, {"a": "A", "z": "Z"})
    assert torch.allclose(got["a"], torch.tensor([4 / 8, 4 / 8, 1 / 9]), rtol=1e-6, atol=0)
    assert torch.equal(got["z"], torch.zeros(3))


def test_module_aware_and_global_magnitude_disagree_as_computed_by_hand():
    # 4 of the 8 weights go. Global magnitude: all of stage 1 (0.6 < 1). DIMAP's ranking:
    # .0128 (B 0.1) < .0333 (A 1) < .1379 (A 2) < .2078 (B 0.4) < .36 (A 3) < .4098 (B 0.5) < 1, 1
    # → A keeps 4 and 3, B keeps 0.6 and 0.5.
    mag, mod = TwoStages(A, B), TwoStages(A, B)
    pk.prune_(mag, "magnitude", 0.5, allocation="global", progress=False)
    report = pk.prune_(mod, "dimap", 0.5, progress=False)
    keep = lambda m, i: get_mask(m.layers[i].blocks[0].attn.qkv).reshape(-1).tolist()  # noqa: E731
    assert keep(mag, 0) == [True] * 4 and keep(mag, 1) == [False] * 4
    assert keep(mod, 0) == [True, True, False, False] and keep(mod, 1) == [True, True, False, False]
    assert report.sparsity == 0.5 and report.config["allocation"] == "global" and report.config["modules"] == "stage"


def test_a_module_scaled_by_a_constant_is_pruned_the_same():
    # data independence of scale: DIMAP sees the same module at any scale (global magnitude does not)
    a = torch.tensor([0.3, -1.2, 0.7, 2.0, 0.05, -0.4])
    one = dimap_scores({"x": a, "y": a.flip(0)}, {"x": "X", "y": "Y"})
    scaled = dimap_scores({"x": a, "y": 100 * a.flip(0)}, {"x": "X", "y": "Y"})
    assert torch.allclose(one["y"], scaled["y"], rtol=1e-6, atol=0)  # float32 rounding of float64 ratios


def test_one_module_per_layer_is_lamp():
    g = torch.Generator().manual_seed(0)
    ws = {"p": torch.randn(5, 7, generator=g), "q": torch.randn(3, 4, generator=g)}
    got = dimap_scores(ws, {n: module_of(n, "layer") for n in ws})
    for n, w in ws.items():
        # the same ratio computed by LAMP's suffix sums in float64 (≤ 35 terms) vs searchsorted: ~35 float64 eps
        assert torch.allclose(got[n], lamp_scores(w.abs()).float(), rtol=1e-6, atol=0)


def test_modules_of_timm_and_hugging_face_swin_names():
    assert [module_role(n) for n in ("layers.0.blocks.1.attn.qkv", "layers.0.blocks.1.attn.proj",
                                     "layers.2.blocks.0.mlp.fc1", "layers.2.blocks.0.mlp.fc2",
                                     "layers.1.downsample.reduction", "layers.0.blocks.0.attn.cpb_mlp.0",
                                     "head.fc")] == ["qkv", "proj", "mlp", "mlp", "aux", "aux", "aux"]
    hf = "swin.encoder.layers.3.blocks.0."
    assert [module_role(hf + s) for s in ("attention.self.query", "attention.self.value", "attention.output.dense",
                                          "intermediate.dense", "output.dense")] == ["qkv", "qkv", "proj", "mlp", "mlp"]
    assert stage_of(hf + "output.dense") == "3" and stage_of("blocks.0.mlp.fc1") == "-"
    assert module_of("layers.1.downsample.reduction") == "stage 1 / aux"
    assert module_of("layers.1.blocks.0.attn.qkv", "network") == "qkv"
    with pytest.raises(ValueError, match="unknown DIMAP grouping 'block'"):
        module_of("x", "block")
