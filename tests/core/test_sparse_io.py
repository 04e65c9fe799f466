import pytest
import torch

import prunekit as pk
from prunekit.models import SmallCNN


def test_save_and_load_back_exactly_and_smaller(tmp_path):
    model = SmallCNN()
    pk.prune_(model, "magnitude", 0.9, allocation="global")
    path = tmp_path / "model.safetensors"
    size = pk.save_sparse(model, path)
    assert size == path.stat().st_size
    dense_bytes = sum(v.numel() * v.element_size() for v in pk.effective_state_dict(model).values())
    assert size < 0.4 * dense_bytes
    state = pk.load_sparse(path)
    expected = pk.effective_state_dict(model)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == expected[k].dtype for k in state)
    fresh = SmallCNN()
    fresh.load_state_dict(state)
    x = torch.randn(2, 1, 28, 28)
    model.eval(), fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert not (tmp_path / "model.safetensors.tmp").exists()


def test_bf16_round_trip(tmp_path):
    t = torch.randn(64, 64).to(torch.bfloat16)
    t[t.abs() < 1] = 0
    pk.save_sparse({"w": t}, tmp_path / "a.safetensors")
    assert torch.equal(pk.load_sparse(tmp_path / "a.safetensors")["w"], t)


def test_failure_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="::"):
        pk.save_sparse({"bad::name": torch.zeros(3)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a prunekit sparse file"):
        pk.load_sparse(tmp_path / "plain.safetensors")
