"""A model folder's shard index entries and weight files never lead out of the folder: every reader of a
model folder (merge, the model loader, the compressed-tensors reader, the sliced-model loader) refuses
``..``, absolute paths and links out before it reads or writes anything."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from prunekit.infra.shards import FolderEscapeError, check_model_folder, inside, safetensors_files
from prunekit.models.hf import tiny_model


def _sharded(folder):
    tiny_model("llama", seed=0).save_pretrained(folder, max_shard_size="100KB")
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _point(folder, index, first_to):
    """Rewrite the index so that the tensors of its first shard live at ``first_to``."""
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: (first_to if v == first else v) for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return first


@pytest.fixture
def escapes(tmp_path):
    """Three folders, each with one way out: a '..' entry, an absolute entry, a shard linked out."""
    made = {}
    for how in ("dotdot", "absolute", "link"):
        folder = tmp_path / how / "model"
        folder.mkdir(parents=True)
        index = _sharded(folder)
        first = sorted(set(index["weight_map"].values()))[0]
        outside = tmp_path / how / "outside.safetensors"
        shutil.copy(folder / first, outside)
        if how == "dotdot":
            _point(folder, index, "../outside.safetensors")
        elif how == "absolute":
            _point(folder, index, str(outside))
        else:
            (folder / first).unlink()
            (folder / first).symlink_to(outside)
        made[how] = (folder, outside)
    return made


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_the_helper_refuses_each_way_out(escapes, how):
    folder, _ = escapes[how]
    with pytest.raises(FolderEscapeError, match="leads out of the folder"):
        safetensors_files(folder)
    with pytest.raises(FolderEscapeError):
        check_model_folder(folder)


def test_names_inside_the_folder_and_the_hub_cache_layout_are_accepted(tmp_path):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.safetensors").write_bytes(b"x")
    (folder / "b.safetensors").symlink_to(folder / "sub" / "a.safetensors")  # a link that stays inside
    assert inside(folder, "sub/a.safetensors") == folder / "sub" / "a.safetensors"
    assert safetensors_files(folder) == ["b.safetensors"]
    repo = tmp_path / "models--org--name"  # huggingface_hub's cache: snapshots/<rev>/file -> ../../blobs/<sha>
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "0123").write_bytes(b"x")
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to("../../blobs/0123")
    assert safetensors_files(repo / "snapshots" / "abc") == ["model.safetensors"]
    for bad in ("", "/etc/passwd", "..", "a/../../b", "C:\\x"):
        with pytest.raises(FolderEscapeError):
            inside(folder, bad)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_merge_writes_nothing_outside_out(escapes, tmp_path, how):
    from prunekit.merge import merge

    base, outside = escapes[how]
    ft = tmp_path / "ft"
    tiny_model("llama", seed=1).save_pretrained(ft)
    before = outside.read_bytes()
    out = base.parent / "merged"
    with pytest.raises(FolderEscapeError):
        merge(base, [ft], "linear", out=out, progress=False)
    assert outside.read_bytes() == before
    assert not out.exists() and sorted(os.listdir(base.parent)) == ["model", "outside.safetensors"]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
def test_the_model_loader_refuses_before_reading(escapes, how):
    from prunekit.models.hf import load_model
    from prunekit.models.errors import ModelFileError

    folder, _ = escapes[how]
    with pytest.raises((FolderEscapeError, ModelFileError), match="leads out of the folder"):
        load_model(folder)


def test_the_compressed_and_sliced_readers_refuse(tmp_path):
    from prunekit.export.compressed import weight_files
    from prunekit.slicing.per_layer import load_sliced

    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "secret.safetensors"))
    (folder / "model.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "prunekit-sliced-llama"}))
    with pytest.raises(FolderEscapeError):
        weight_files(folder)
    with pytest.raises(FolderEscapeError):
        load_sliced(folder)
