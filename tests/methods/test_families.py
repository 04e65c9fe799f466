"""Wanda, SparseGPT and OWL on every supported family (tiny random configs): half of every row (every
expert's row) goes, the model still runs, and the finalized model saves and reloads."""

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import get_mask
from prunekit.core.scope import is_transposed
from prunekit.models.tiny import DECODERS, MOE, tiny_model

CALIB = torch.randint(0, 128, (8, 16))


def _rows(module, param):
    keep = get_mask(module, param)
    if param != "weight":  # fused experts: (experts, out, in), or (experts, in, out) when transposed
        return keep.transpose(1, 2) if getattr(module, "is_transposed", False) else keep
    return keep.t() if is_transposed(module) else keep


def _targets(model, report):
    mods = dict(model.named_modules())
    for name in report.layers:
        if name in mods:
            yield name, mods[name], "weight"
        else:
            owner, _, param = name.rpartition(".")
            yield name, mods[owner], param


@pytest.mark.parametrize("family", DECODERS)
def test_wanda_prunes_half_of_every_row_and_reloads(family, tmp_path):
    model = tiny_model(family)
    emb = model.get_input_embeddings().weight.detach().clone()
    report = pk.prune_(model, "wanda", 0.5, calibration=CALIB, progress=False)
    assert report.sparsity == pytest.approx(0.5) and report.skipped == {}
    experts = [n for n in report.layers if ".experts." in n]
    assert bool(experts) == (family in MOE)
    for name, module, param in _targets(model, report):
        share = (~_rows(module, param)).float().mean(-1)
        assert torch.allclose(share, torch.full_like(share, 0.5)), name
    assert torch.equal(model.get_input_embeddings().weight.detach(), emb)
    logits = model(input_ids=CALIB[:2]).logits
    assert torch.isfinite(logits).all()
    pk.finalize_(model)
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(back(input_ids=CALIB[:2]).logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_sparsegpt_reconstructs_every_family(family):
    model = tiny_model(family)
    dense = tiny_model(family)
    report = pk.prune_(model, "sparsegpt", 0.5, calibration=CALIB, progress=False)
    assert report.sparsity == pytest.approx(0.5)
    moved = 0
    for (name, module, param), (_, dmod, _) in zip(_targets(model, report), _targets(dense, report)):
        w, d = getattr(module, param).detach(), getattr(dmod, param).detach()
        alive = w != 0
        moved += int(not torch.allclose(w[alive], d[alive]))
    assert moved == len(report.layers)  # OBS updated the surviving weights of every layer and expert
    assert torch.isfinite(model(input_ids=CALIB[:2]).logits).all()


@pytest.mark.parametrize("family", ["gemma3", "phi3", "gpt_neox", "falcon", "qwen3_moe"])
def test_owl_allocation_and_two_four_on_more_families(family):
    model = tiny_model(family, layers=3)
    report = pk.prune_(model, "wanda", 0.5, allocation="owl", calibration=CALIB, owl_lambda=0.1, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    per_block = {}
    for name, s in report.layers.items():
        per_block.setdefault(name.split(".layers.")[-1].split(".h.")[-1].split(".")[0], []).append(s)
    assert len({round(sum(v) / len(v), 3) for v in per_block.values()}) > 1  # blocks get different sparsities
    other = tiny_model(family)
    nm = pk.prune_(other, "sparsegpt", pattern="2:4", calibration=CALIB, progress=False)
    assert nm.sparsity == pytest.approx(0.5)
