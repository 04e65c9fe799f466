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


def _pruned_state():
    w = torch.randn(64, 64)
    w[w.abs() < 1] = 0
    return {"w": w, "b": torch.randn(64)}


def test_saved_files_get_umask_permissions_and_a_users_tmp_is_kept(tmp_path):
    import os
    import stat

    path = tmp_path / "m.safetensors"
    (tmp_path / "m.safetensors.tmp").write_text("my own notes")
    old = os.umask(0o022)
    try:
        pk.save_sparse(_pruned_state(), path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # safetensors alone leaves 0600
    assert (tmp_path / "m.safetensors.tmp").read_text() == "my own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.tmp"]


@pytest.mark.parametrize("where", [-1, -300])  # inside the dense bias / inside the bitmask values
def test_a_flipped_byte_fails_the_checksum(tmp_path, where):
    path = tmp_path / "m.safetensors"
    pk.save_sparse(_pruned_state(), path)
    data = bytearray(path.read_bytes())
    data[where] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum.*corrupt"):
        pk.load_sparse(path)


def _raw(path, tensors, layout, fmt="prunekit-sparse-v1"):
    import json

    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": fmt, "layout": json.dumps(layout)})


def test_a_tiny_file_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.safetensors"
    _raw(path, {"w::bits": torch.zeros(1, dtype=torch.uint8), "w::values": torch.zeros(0)},
         {"w": {"format": "bitmask", "shape": [2 ** 20, 2 ** 20]}})
    assert path.stat().st_size < 300
    with pytest.raises(ValueError, match=r"declares shape \[1048576, 1048576\] \(1,099,511,627,776 entries\) but "
                                         r"its bitmask holds 8"):
        pk.load_sparse(path)


@pytest.mark.filterwarnings("ignore:.*no checksums")
@pytest.mark.parametrize("tensors, layout, match", [
    ({"w::bits": torch.zeros(1, dtype=torch.uint8), "w::values": torch.zeros(9)},
     {"w": {"format": "bitmask", "shape": [8]}}, "stores 9 values for 8 entries"),
    ({"w::bits": torch.zeros(1, dtype=torch.uint8), "w::values": torch.zeros(2)},
     {"w": {"format": "bitmask", "shape": [8]}}, "marks 0 entries for 2 stored values"),
    ({"w::bits": torch.zeros(1), "w::values": torch.zeros(0)},
     {"w": {"format": "bitmask", "shape": [8]}}, "expected type"),
    ({"w::bits": torch.zeros(1, dtype=torch.uint8), "w::values": torch.zeros(0)},
     {"w": {"format": "bitmask", "shape": [-8]}}, "invalid shape"),
    ({"w": torch.zeros(3), "x": torch.zeros(3)}, {"w": {"format": "dense"}}, r"undeclared \['x'\]"),
    ({"w": torch.zeros(3)}, {"w": {"format": "zip"}}, "unknown layout"),
    ({"w::values": torch.zeros(3)}, {"w": {"format": "bitmask", "shape": [3]}}, "lacks its part"),
])
def test_inconsistent_layouts_are_refused(tmp_path, tensors, layout, match):
    path = tmp_path / "bad.safetensors"
    _raw(path, tensors, layout)
    with pytest.raises(ValueError, match=match):
        pk.load_sparse(path)


@pytest.mark.parametrize("cut", [0, 5, 9, 200])
def test_truncated_or_empty_files_are_clear_errors(tmp_path, cut):
    path = tmp_path / "m.safetensors"
    pk.save_sparse(_pruned_state(), path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pk.load_sparse(path)


def test_old_files_without_checksums_load_with_a_warning(tmp_path):
    import numpy as np

    w = _pruned_state()["w"]
    nz = (w != 0).reshape(-1)
    path = tmp_path / "old.safetensors"
    _raw(path, {"w::bits": torch.from_numpy(np.packbits(nz.numpy())), "w::values": w.reshape(-1)[nz].clone(),
                "b": torch.ones(3)}, {"w": {"format": "bitmask", "shape": [64, 64]}, "b": {"format": "dense"}})
    with pytest.warns(UserWarning, match="no checksums"):
        state = pk.load_sparse(path)
    assert torch.equal(state["w"], w) and torch.equal(state["b"], torch.ones(3))
