import sys

import pytest

from prunekit.metrics.memory import peak_load_memory
from prunekit.metrics.size import folder_bytes, weight_bytes


def test_peak_load_memory_sees_what_the_loader_allocates(tmp_path, monkeypatch):
    (tmp_path / "alloc_probe.py").write_text(
        "import torch\n"
        "def load(spec):\n"
        "    x = torch.ones(int(spec), dtype=torch.uint8)\n"
        "    del x\n"
        "    return None\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    big = peak_load_memory(str(300_000_000), loader="alloc_probe:load", preload=("torch",))
    assert 300e6 <= big.added_bytes < 330e6  # the 300 MB tensor, freed before the function returns
    assert big.to_dict()["added_bytes"] == big.peak_bytes - big.baseline_bytes


def test_a_loader_that_fails_is_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "bad_probe.py").write_text("def load(spec):\n    raise OSError('no such model ' + spec)\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    with pytest.raises(RuntimeError, match="no such model nope"):
        peak_load_memory("nope", loader="bad_probe:load", preload=())


def test_weight_bytes_count_the_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-2.safetensors").write_bytes(b"x" * 50)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 150 and folder_bytes(tmp_path) == 152
    assert weight_bytes(tmp_path / "model.safetensors") == 100
    with pytest.raises(FileNotFoundError):
        weight_bytes(tmp_path / "nope")
