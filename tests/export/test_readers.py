"""Every artifact kind, read by every reader this environment has (and, in marked tests, a transformers 4.x
venv and llama.cpp), gives back the in-memory model's logits; what a reader would misread is refused.

The 4.x venv: PRUNEKIT_TF4_PYTHON, else .venv-tf4/bin/python in the repository (``make venv-tf4``).
llama.cpp: built by ``make llama-cpp`` into $PRUNEKIT_LLAMA_CPP (default ~/.cache/prunekit/llama.cpp)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prunekit.export import ReadBackError, export
from prunekit.export.compat import reader_keys
from prunekit.export.dtype import SaveDtype
from prunekit.export.load import load_artifact
from prunekit.export.llama_cpp import llama_cpp_tool, run_simple
from prunekit.export.readback import gguf_round, read_back_folder, reference_logits, tolerance
from prunekit.export.save import check_float16, compressed_reader, save_model

from .conftest import make_llama, pruned

ROOT = Path(__file__).resolve().parents[2]
TF4 = os.environ.get("PRUNEKIT_TF4_PYTHON") or str(ROOT / ".venv-tf4" / "bin" / "python")
HAS_TF4 = Path(TF4).is_file()
BF16 = SaveDtype(torch.bfloat16, "test")


def _llama(tokenizer, **kw):
    # a RoPE base other than 10000, so that a reader falling back to the default shows in the logits
    return pruned(make_llama(len(tokenizer), rope_theta=100000.0, **kw))


def _check(model, loaded, round_) -> None:
    """The loaded model's logits equal the in-memory model's with the same rounded weights, up to float32
    summation order (readback.tolerance: 2^-24 x sqrt(hidden width) x blocks x logit scale x 64)."""
    ids = torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(model, ids, round_)
    if next(loaded.parameters()).dtype != torch.float32:
        loaded = loaded.float()  # the stored values, exactly (bf16/fp16 -> fp32 is exact)
    with torch.no_grad():
        got = loaded.eval()(ids).logits
    assert (got - expected).abs().max().item() <= tolerance(expected, 64, 2)


# --- config keys that transformers 4.x and 5.x read alike -------------------------------------------------

def test_saved_config_carries_the_4x_names_beside_the_5x_ones(tokenizer, tmp_path):
    model = _llama(tokenizer)
    save_model(model, tokenizer, tmp_path / "m", "safetensors", BF16)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == 100000.0
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert config["rope_scaling"] is None  # the default RoPE, as 4.x wrote it


def test_a_scaled_rope_is_written_as_rope_scaling_and_5x_still_reads_the_same_parameters(tokenizer, tmp_path):
    from transformers import AutoConfig

    model = _llama(tokenizer, rope_scaling={"rope_type": "linear", "factor": 2.0})
    save_model(model, tokenizer, tmp_path / "m", "safetensors", BF16)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and config["rope_theta"] == 100000.0
    assert AutoConfig.from_pretrained(tmp_path / "m").rope_parameters == model.config.rope_parameters


def test_per_layer_type_rope_bases_get_their_4x_names():
    gemma = reader_keys({"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})
    assert gemma["rope_theta"] == 1e6 and gemma["rope_local_base_freq"] == 1e4 and gemma["rope_scaling"] is None
    nested = reader_keys({"model_type": "x", "text_config": {"model_type": "llama", "dtype": "bfloat16",
                                                             "rope_parameters": {"rope_type": "default",
                                                                                 "rope_theta": 5e5}}})
    assert nested["text_config"]["rope_theta"] == 5e5 and nested["text_config"]["torch_dtype"] == "bfloat16"


def test_renamed_layer_types_are_written_with_the_names_4x_reads_and_5x_maps_back():
    from transformers import AutoConfig

    new = AutoConfig.for_model("granitemoehybrid", num_hidden_layers=2,
                               layer_types=["linear_attention", "full_attention"]).to_dict()
    old = reader_keys(new)
    assert old["layer_types"] == ["mamba", "attention"]
    assert AutoConfig.for_model(**old).layer_types == ["linear_attention", "full_attention"]


def test_read_back_catches_a_reader_that_takes_the_default_rope_base(tokenizer, tmp_path):
    """What transformers 4.53 did with a config that had no rope_theta: the same weights, base 10000."""
    model = _llama(tokenizer)
    save_model(model, tokenizer, tmp_path / "m", "safetensors", BF16)
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["rope_parameters"]["rope_theta"] = config["rope_theta"] = 10000.0
    path.write_text(json.dumps(config))
    with pytest.raises(ReadBackError, match=r"does not read back as the model: read back with AutoModelForCausalLM"):
        read_back_folder(model, tmp_path / "m", torch.bfloat16)


def test_a_folder_the_stock_loader_cannot_build_is_not_reported_saved(tokenizer, tmp_path):
    """A pruned shape the config does not describe (one layer's MLP narrower): from_pretrained fails or
    mismatches; either way the export is an error and leaves nothing."""
    import copy

    model = _llama(tokenizer)
    narrow = copy.deepcopy(model)
    mlp = narrow.model.layers[0].mlp
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        setattr(mlp, name, torch.nn.Linear(64, 96, bias=False))
        getattr(mlp, name).weight.data = old.weight.data[:96].clone()
    mlp.down_proj = torch.nn.Linear(96, 64, bias=False)
    with pytest.raises(ReadBackError, match=r"(cannot load it|does not read back).*nothing was saved at "):
        export(narrow, tokenizer, tmp_path / "m", to="safetensors", dtype="float32")
    assert not (tmp_path / "m").exists()


def test_an_encoder_decoder_is_read_back_with_decoder_ids(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=120, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128)).eval()
    report = export(model, None, tmp_path / "m", to="safetensors", dtype="float32")
    rb = report.detail["read_back"]
    assert rb["tokens"] == 64 and rb["max_abs_diff"] <= rb["tolerance"]


# --- every artifact kind x every reader here ---------------------------------------------------------------

FOLDERS = ["float32", "bfloat16", "float16"]
GGUFS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_1"]


@pytest.mark.parametrize("dtype", FOLDERS)
def test_each_folder_reads_back_with_transformers_and_prunekit(tokenizer, tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    model = _llama(tokenizer)
    report = export(model, tokenizer, tmp_path / "m", to="safetensors", dtype=dtype)
    assert report.detail["read_back"]["max_abs_diff"] <= report.detail["read_back"]["tolerance"]
    cast = getattr(torch, dtype)
    round_ = lambda _k, t: t.to(cast).to(t.dtype)  # noqa: E731
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype="auto")  # as a user loads it
    assert next(stock.parameters()).dtype == cast  # the config makes the loader build the saved dtype
    _check(model, stock, round_)
    _check(model, load_artifact(tmp_path / "m").model, round_)


@pytest.mark.parametrize("quant", GGUFS)
def test_each_gguf_reads_back_with_transformers_and_prunekit(tokenizer, tmp_path, quant):
    from transformers import AutoModelForCausalLM

    from prunekit.export.gguf import plan_gguf

    model = _llama(tokenizer)
    path = tmp_path / "m.gguf"
    report = export(model, tokenizer, path, to="gguf", quant=quant)
    first = report.detail["read_back"][0]
    assert "gguf_file=" in first["reader"] and first["max_abs_diff"] <= first["tolerance"]
    round_ = gguf_round(plan_gguf(model, tokenizer, quant))
    _check(model, AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32), round_)
    _check(model, load_artifact(path).model, round_)


# --- what a reader here would misread is refused -----------------------------------------------------------

@pytest.mark.skipif(compressed_reader() is not None, reason="this environment's stack reads compressed folders")
def test_compressed_is_refused_where_no_reader_reads_it_naming_the_versions_that_do(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"only transformers 4.x with compressed-tensors <= 0.14 \(checked: "
                                         r"transformers 4.53.3.*this environment has transformers 5.*"
                                         r"--format safetensors.*PRUNEKIT_COMPRESSED_READER"):
        export(_llama(tokenizer), tokenizer, tmp_path / "c", to="compressed")
    assert not (tmp_path / "c").exists()


def test_a_compressed_folder_the_stock_loader_misreads_is_not_reported_saved(tokenizer, tmp_path, old_stack):
    """Forced past the refusal, the read-back itself catches transformers 5 + compressed-tensors 0.20
    leaving every compressed Linear random (issue 20 item 5)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4.x reads the sparse layouts")
    with pytest.raises(ReadBackError, match=r"14 weights missing and left random.*nothing was saved"):
        export(_llama(tokenizer), tokenizer, tmp_path / "c", to="compressed")
    assert not (tmp_path / "c").exists()


def test_float16_overflow_is_refused_naming_the_tensor(tokenizer, tmp_path):
    model = _llama(tokenizer)
    model.model.layers[1].mlp.down_proj.weight.data[0, 0] = 1e5
    for kw, where in ((dict(to="safetensors", dtype="float16"), tmp_path / "m"),
                      (dict(to="gguf", quant="f16"), tmp_path / "m.gguf")):
        with pytest.raises(ValueError, match=r"beyond float16's range ±65504.*(layers.1.mlp.down_proj|blk.1.ffn_down).*1e\+05.*bf"):
            export(model, tokenizer, where, **kw)
        assert not where.exists()
    export(model, tokenizer, tmp_path / "b", to="safetensors", dtype="bfloat16")  # bf16 holds it
    check_float16({"w": torch.tensor([65504.0, -65504.0])})  # the largest float16 itself is fine


def test_a_full_disk_during_export_says_no_space_left(tokenizer, tmp_path, monkeypatch, capsys):
    import safetensors

    from prunekit.cli import main

    def full(*_a, **_k):
        # what safetensors 0.8 raises on a full tmpfs (checked by hand with a 64 kB mount)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    save_model(_llama(tokenizer), tokenizer, tmp_path / "src", "safetensors", BF16)
    monkeypatch.setattr("transformers.modeling_utils.PreTrainedModel.save_pretrained", full)
    assert main(["export", str(tmp_path / "src"), "--to", "safetensors", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "corrupt" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("works", [True, False])
def test_where_llama_cpp_is_built_every_gguf_export_is_run_by_it(tokenizer, tmp_path, monkeypatch, works):
    """The wiring, with a stand-in llama-simple (the real one: the marked test below): its failure leaves no
    file and names llama.cpp's own message; its success is reported."""
    bin_ = tmp_path / "llama" / "bin"
    bin_.mkdir(parents=True)
    tool = bin_ / "llama-simple"
    tool.write_text("#!/bin/sh\n" + ('echo "$2 ok"' if works else 'echo "llama_model_load: error loading model: '
                                                                   'bad tensor type" >&2; exit 1') + "\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PRUNEKIT_LLAMA_CPP", str(tmp_path / "llama"))
    path = tmp_path / "m.gguf"
    if works:
        report = export(_llama(tokenizer), tokenizer, path, to="gguf", quant="q8_0")
        assert report.detail["read_back"][1]["note"].startswith("loaded and ran with llama.cpp")
        assert "loaded and ran with llama.cpp" in str(report)
    else:
        with pytest.raises(ReadBackError, match=r"could not run .*bad tensor type; nothing was saved at .*m.gguf"):
            export(_llama(tokenizer), tokenizer, path, to="gguf", quant="q8_0")
        assert not path.exists() and list(tmp_path.glob("*.gguf")) == []


def test_llama_cpp_output_that_is_not_utf8_is_read_not_a_crash(tmp_path, monkeypatch):
    """A pruned (or random) model's greedy continuation may be any bytes: llama-simple prints them raw."""
    bin_ = tmp_path / "llama" / "bin"
    bin_.mkdir(parents=True)
    tool = bin_ / "llama-simple"
    tool.write_text("#!/bin/sh\nprintf 'The\\223Yun\\002\\n'\n")  # the bytes a tiny random llama printed
    tool.chmod(0o755)
    monkeypatch.setenv("PRUNEKIT_LLAMA_CPP", str(tmp_path / "llama"))
    assert run_simple(tmp_path / "m.gguf") == "The\ufffdYun\x02\n"


# --- marked: other environments' readers ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not HAS_TF4, reason=f"no transformers 4.x venv at {TF4}: set PRUNEKIT_TF4_PYTHON or run "
                                        "'make venv-tf4'")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_4_reads_our_folders_as_the_same_model(tokenizer, tmp_path, dtype):
    from prunekit.export.interop import logits_in

    model = _llama(tokenizer)
    export(model, tokenizer, tmp_path / "m", to="safetensors", dtype=dtype)
    ids = torch.randint(0, len(tokenizer), (1, 48), generator=torch.Generator().manual_seed(2))
    theirs, versions = logits_in(TF4, tmp_path / "m", ids)
    assert versions["transformers"].startswith("4.")
    cast = getattr(torch, dtype)
    expected = reference_logits(model, ids, lambda _k, t: t.to(cast).to(t.dtype))
    assert (theirs.float() - expected).abs().max().item() <= tolerance(expected, 64, 2)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TF4, reason=f"no transformers 4.x venv at {TF4}: set PRUNEKIT_TF4_PYTHON or run "
                                        "'make venv-tf4'")
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_compressed_folders_are_read_back_in_the_4x_venv_named_as_their_reader(tokenizer, tmp_path, monkeypatch,
                                                                             pattern):
    monkeypatch.setenv("PRUNEKIT_COMPRESSED_READER", TF4)
    model = pruned(make_llama(len(tokenizer), rope_theta=100000.0), pattern)
    report = export(model, tokenizer, tmp_path / "c", to="compressed")
    rb = report.detail["read_back"]
    assert "compressed-tensors 0.1" in rb["reader"] and rb["max_abs_diff"] <= rb["tolerance"]


@pytest.mark.slow
@pytest.mark.skipif(llama_cpp_tool("llama-simple") is None, reason="llama.cpp is not built: run 'make llama-cpp'")
@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_llama_cpp_runs_a_pruned_smollm2_gguf_and_continues_as_transformers_does(tmp_path, quant):
    """SmolLM2-135M, magnitude 50%: llama.cpp's greedy continuation equals transformers' on the same file."""
    import prunekit as pk
    from prunekit.models.hf import load_model
    from transformers import AutoModelForCausalLM

    lm = load_model("smollm2-135m")
    pk.prune_(lm.model, method="magnitude", sparsity=0.5)
    pk.finalize_(lm.model)
    path = tmp_path / f"m-{quant}.gguf"
    report = export(lm.model, lm.tokenizer, path, to="gguf", quant=quant, source="smollm2-135m")
    assert report.detail["read_back"][1]["note"].startswith("loaded and ran with llama.cpp")
    prompt = "The Python interpreter"
    ours = run_simple(path, prompt, n_predict=12)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = back.generate(ids, max_new_tokens=12, do_sample=False)
    theirs = lm.tokenizer.decode(out[0], skip_special_tokens=True)
    assert ours.strip().startswith(theirs.strip()[: len(prompt) + 20])
