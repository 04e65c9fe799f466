import pytest
import torch

from prunekit import prune_
from prunekit.core.mask import get_mask
from prunekit.models.reference import MLP
from prunekit.train.state import current_masks, load_plain_state_, plain_state, replace_masks_, zero_pruned_


def test_plain_state_keys_do_not_change_when_masked():
    model = MLP(hidden=(16, 8))
    keys = set(plain_state(model))
    prune_(model, "magnitude", 0.5, progress=False)
    assert set(plain_state(model)) == keys
    assert "body.0.weight" in keys


def test_replace_masks_can_bring_entries_back_and_checks_shapes():
    model = MLP(hidden=(16, 8))
    prune_(model, "magnitude", 0.5, progress=False)
    masks = current_masks(model)
    full = {k: torch.ones_like(v) for k, v in masks.items()}
    replace_masks_(model, full)
    assert bool(get_mask(model.body[0]).all())
    replace_masks_(model, {})
    assert get_mask(model.body[0]) is None
    with pytest.raises(ValueError, match="has shape"):
        replace_masks_(model, {"body.0": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="lacks"):
        replace_masks_(model, {"nope": torch.ones(3, 3, dtype=torch.bool)})


def test_zero_pruned_and_load_plain_state():
    model = MLP(hidden=(16, 8))
    saved = plain_state(model)
    prune_(model, "magnitude", 0.5, progress=False)
    zero_pruned_(model)
    w = model.body[0].parametrizations.weight.original
    assert int((w == 0).sum()) == int((~get_mask(model.body[0])).sum())
    load_plain_state_(model, saved)
    assert torch.equal(w, saved["body.0.weight"])
    with pytest.raises(ValueError, match="lacks"):
        load_plain_state_(model, {"x.weight": torch.zeros(1)})
