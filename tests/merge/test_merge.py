"""Merging saved Hugging Face folders: streamed output equals the in-memory merge, reloads and generates;
bad input is refused before anything is written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunekit.merge import SafetensorsWriter, TensorFolder, merge, merge_state_dicts
from prunekit.merge.sources import TensorInfo
from prunekit.models.hf import tiny_model


def _finetuned(model, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    ft = tiny_model("llama", seed=0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return ft


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = tiny_model("llama", seed=0)
    base.save_pretrained(root / "base")
    _finetuned(base, 1e-3, 1).save_pretrained(root / "a")
    _finetuned(base, 1e-3, 2).save_pretrained(root / "b")
    return root


def _state(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method,fields", [
    ("dare_ties", dict(density=0.2)), ("dare_linear", dict(density=0.5, weights=[0.5, 0.5])),
    ("ties", dict(density=0.3)), ("della", dict(density=0.4)), ("magnitude", dict(density=0.1)),
    ("linear", {}),
])
def test_streamed_merge_equals_in_memory_and_reloads(folders, tmp_path, method, fields):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    report = merge(folders / "base", [folders / "a", folders / "b"], method, out=out, seed=3, progress=False, **fields)
    expected = merge_state_dicts(_state(folders / "base"), [_state(folders / "a"), _state(folders / "b")],
                                 method, seed=3, **fields)
    got = _state(out)
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], expected[n]) for n in got)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 7)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["merge"]["method"] == method and "prunekit_version" in meta
    assert report.tensors_merged == len(got) and report.params_merged == sum(t.numel() for t in got.values())
    for d in report.deltas:
        assert d.changed > 0.99 and 5e-4 < d.mean_abs < 1.5e-3 and d.large_share < 0.01
        if "density" in fields:
            assert d.kept == pytest.approx(fields["density"], abs=0.05)


def test_same_seed_same_bytes_different_seed_differs(folders, tmp_path):
    args = (folders / "base", [folders / "a", folders / "b"], "dare_ties")
    merge(*args, out=tmp_path / "x", density=0.1, seed=0, progress=False)
    merge(*args, out=tmp_path / "y", density=0.1, seed=0, progress=False)
    merge(*args, out=tmp_path / "z", density=0.1, seed=1, progress=False)
    x, y, z = (tmp_path / n / "model.safetensors" for n in "xyz")
    assert x.read_bytes() == y.read_bytes()
    assert x.read_bytes() != z.read_bytes()


def test_bad_input_refused_before_writing(folders, tmp_path):
    out = tmp_path / "never"
    tiny_model("qwen2", seed=0).save_pretrained(tmp_path / "qwen")
    with pytest.raises(ValueError, match="architectures differ"):
        merge(folders / "base", [tmp_path / "qwen"], "ties", density=0.5, out=out, progress=False)
    tiny_model("llama", vocab_size=130, seed=0).save_pretrained(tmp_path / "vocab")
    with pytest.raises(ValueError, match="vocabularies differ"):
        merge(folders / "base", [tmp_path / "vocab"], "ties", density=0.5, out=out, progress=False)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
            merge(folders / "base", [folders / "a"], "dare_ties", density=bad, out=out, progress=False)
    with pytest.raises(ValueError, match="one weight per model"):
        merge(folders / "base", [folders / "a"], "dare_ties", density=0.5, weights=[1, 1], out=out, progress=False)
    assert not out.exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_tokenizer_vocabularies_are_compared(folders, tmp_path):
    import shutil

    for name, extra in (("t1", {}), ("t2", {"zzz": 3})):
        shutil.copytree(folders / ("base" if name == "t1" else "a"), tmp_path / name)
        vocab = {"a": 0, "b": 1, "c": 2, **extra}
        (tmp_path / name / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    with pytest.raises(ValueError, match="tokenizers of the base and .* disagree"):
        merge(tmp_path / "t1", [tmp_path / "t2"], "ties", density=0.5, out=tmp_path / "o", progress=False)


def test_sharded_base_keeps_its_layout(folders, tmp_path):
    base = tiny_model("llama", seed=0)
    base.save_pretrained(tmp_path / "sbase", max_shard_size="100KB")
    _finetuned(base, 1e-3, 1).save_pretrained(tmp_path / "sa", max_shard_size="300KB")
    assert (tmp_path / "sbase" / "model.safetensors.index.json").is_file()
    merge(tmp_path / "sbase", [tmp_path / "sa"], "ties", density=0.5, out=tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.safetensors")) == \
        sorted(p.name for p in (tmp_path / "sbase").glob("*.safetensors"))
    folder = TensorFolder(tmp_path / "o")
    assert folder.names() == TensorFolder(tmp_path / "sbase").names()


def test_writer_round_trip_and_order_checks(tmp_path):
    ts = {"a": torch.randn(3, 2).to(torch.bfloat16), "b": torch.arange(5), "c": torch.zeros(0)}
    infos = [TensorInfo(n, t.dtype, tuple(t.shape), "x") for n, t in ts.items()]
    w = SafetensorsWriter(tmp_path / "x.safetensors", infos, {"format": "pt"})
    with pytest.raises(ValueError, match="expected tensor 'a' next"):
        w.write("b", ts["b"])
    for n, t in ts.items():
        w.write(n, t)
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[n], t) for n, t in ts.items())
    save_file({"a": torch.ones(2)}, str(tmp_path / "ref.safetensors"))  # and the library reads ours like its own
    w = SafetensorsWriter(tmp_path / "short.safetensors", infos)
    w.write("a", ts["a"])
    with pytest.raises(ValueError, match="never written"):
        w.close()


def test_only_config_and_tokenizer_files_are_copied_never_folders_or_links_out(folders, tmp_path):
    import os
    import shutil

    base = tmp_path / "base"
    shutil.copytree(folders / "base", base)
    (base / "tokenizer_config.json").write_text("{}")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("PRIVATE")
    (base / "extras").symlink_to(secrets)  # a link out of the base
    (base / "special_tokens_map.json").symlink_to(secrets / "id_rsa")  # a listed name, but a link out
    shutil.copytree(folders / "a", base / "old-merge")  # an earlier output kept inside the base
    (base / "notes.md").write_text("mine")
    report = merge(base, [folders / "a"], "linear", out=tmp_path / "o", progress=False)
    assert sorted(os.listdir(tmp_path / "o")) == ["config.json", "generation_config.json", "model.safetensors",
                                                 "prunekit.json", "report.txt", "tokenizer_config.json"]
    assert any("not copied from the base: extras/, notes.md, old-merge/, special_tokens_map.json" in n
               for n in report.notes)


def test_non_finite_inputs_and_results_are_errors_naming_model_and_tensor(folders, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folders / "a", bad)
    state = _state(bad)
    name = "model.layers.0.mlp.up_proj.weight"
    state[name][3, 5] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=f"tensor '{name}' of {bad} holds 1 NaN"):
        merge(folders / "base", [folders / "a", bad], "ties", density=0.5, out=out, progress=False)
    for scale in (float("nan"), float("inf"), 1e39):
        with pytest.raises(ValueError, match="scale must be a finite number within float32's range"):
            merge(folders / "base", [folders / "a"], "task_arithmetic", scale=scale, out=out, progress=False)
    with pytest.raises(ValueError, match="weights must be finite numbers within float32's range"):
        merge(folders / "base", [folders / "a", folders / "b"], "task_arithmetic", weights=[1e39, 1e39], out=out,
              progress=False)
    with pytest.raises(ValueError, match="the merged tensor '.*' holds .* every input is finite: the merge overflows"):
        merge(folders / "base", [folders / "a", folders / "b"], "task_arithmetic", weights=[3e38, 3e38], scale=1e6,
              out=out, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    with pytest.raises(ValueError, match=f"tensor '{name}' of model 1 holds 1 NaN"):
        merge_state_dicts(_state(folders / "base"), [_state(folders / "a"), state], "linear")


def test_a_tensor_of_another_dtype_kind_is_refused(folders, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(folders / "a", odd)
    state = _state(odd)
    name = "model.layers.0.mlp.up_proj.weight"
    state[name] = state[name].to(torch.int32)
    save_file(state, str(odd / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"dtypes differ in kind .*{name} float32 vs int32"):
        merge(folders / "base", [odd], "linear", out=tmp_path / "never", progress=False)
    with pytest.raises(ValueError, match=f"model 0: tensor dtypes differ in kind.*{name}"):
        merge_state_dicts(_state(folders / "base"), [state], "linear")
    assert not (tmp_path / "never").exists()


def test_out_may_not_be_an_input(folders, tmp_path):
    import shutil

    merged = tmp_path / "m"
    merge(folders / "base", [folders / "a"], "linear", out=merged, progress=False)
    shutil.copy(folders / "base" / "config.json", merged / "config.json")
    before = (merged / "model.safetensors").read_bytes()
    for base, models in ((merged, [folders / "a"]), (folders / "base", [merged])):
        with pytest.raises(ValueError, match="would destroy the input"):
            merge(base, models, "linear", out=merged, overwrite=True, progress=False)
    assert (merged / "model.safetensors").read_bytes() == before
