"""Weight-rewriting methods hold their masks packed during the walk and register them at its end."""

import contextlib

import pytest
import torch

import prunekit as pk
from prunekit.core.mask import PackedMasks, get_mask, masked_tensors
from prunekit.methods import layerwise
from prunekit.methods.sparsegpt import SparseGPT
from prunekit.models.hf import tiny_model


def test_packed_masks_give_back_the_masks_they_were_given():
    lin = torch.nn.Linear(13, 7)  # 91 entries: not a multiple of 8, so the last byte is partly padding
    keep = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.4
    held = PackedMasks()
    held.add(lin, keep)
    assert get_mask(lin) is None and len(held) == 1
    assert held.pending[0][2].numel() == 12  # ceil(91 / 8) bytes, not 91 bools
    held.apply_()
    assert torch.equal(get_mask(lin), keep) and len(held) == 0


def test_packed_masks_refuse_a_mask_of_another_shape():
    with pytest.raises(ValueError, match="does not match"):
        PackedMasks().add(torch.nn.Linear(4, 3), torch.ones(4, 3, dtype=torch.bool))


def _prune(method, pack: bool, seed=0):
    torch.manual_seed(seed)
    model = tiny_model("llama")
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    if pack:
        pk.prune_(model, method, 0.5, calibration=calib, progress=False)
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(layerwise.BlockwiseMethod, "packed_masks", lambda self: contextlib.nullcontext())
            pk.prune_(model, method, 0.5, calibration=calib, progress=False)
    return model


@pytest.mark.parametrize("method", ["sparsegpt", "alps"])
def test_packing_changes_neither_masks_nor_weights(method):
    packed, plain = _prune(method, True), _prune(method, False)
    a = {n: get_mask(m, p) for n, m, p in masked_tensors(packed)}
    b = {n: get_mask(m, p) for n, m, p in masked_tensors(plain)}
    assert a.keys() == b.keys() and len(a) > 0
    for n in a:  # the same computation in the same process: the same bits
        assert torch.equal(a[n], b[n]), n
    sa, sb = packed.state_dict(), plain.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_no_layer_is_masked_until_the_walk_ends_and_zeros_are_in_the_weights(monkeypatch):
    seen = []
    real = SparseGPT.prune_layer

    def spy(self, name, module, *a, **k):
        real(self, name, module, *a, **k)
        seen.append((get_mask(module) is None, bool((module.weight == 0).float().mean() >= 0.45)))

    monkeypatch.setattr(SparseGPT, "prune_layer", spy)
    model = _prune("sparsegpt", True)
    assert seen and all(unmasked and zeros for unmasked, zeros in seen)
    assert len(list(masked_tensors(model))) == len(seen)


def test_a_failed_walk_leaves_no_mask_and_the_weights_as_they_were(monkeypatch):
    torch.manual_seed(0)
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = SparseGPT.prune_layer

    def fail_late(self, name, module, *a, **k):
        calls.append(name)
        if len(calls) == 5:
            raise RuntimeError("boom")
        real(self, name, module, *a, **k)

    monkeypatch.setattr(SparseGPT, "prune_layer", fail_late)
    with pytest.raises(RuntimeError, match="boom"):
        pk.prune_(model, "sparsegpt", 0.5, calibration=torch.randint(0, 128, (4, 16)), progress=False)
    assert not list(masked_tensors(model))
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
