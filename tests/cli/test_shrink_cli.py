"""``prunekit shrink``: a smaller model saved, read back and checked; distillation resumed from a checkpoint;
bad input refused in one line before anything is loaded or written."""

import json

import pytest

from prunekit.cli import main


def _args(root, out, *extra):
    return ["shrink", "--model", str(root / "model"), "--calib", str(root / "texts"), "--nsamples", "4",
            "--seqlen", "32", "--eval-windows", "2", "--candidates", "2", "--out", str(out), "--no-time", *extra]


def test_shrink_saves_a_smaller_model_that_reloads(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "small"
    assert main(_args(tiny_folder, out, "--json", "--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "32")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["shrink"]["non_embedding_kept"] <= 0.6
    assert set(data["perplexity"]) == {"dense", "shrunk", "distilled"}
    assert data["distill"]["tokens"] == 2 * 2 * 32 and data["distill"]["peak_rss_bytes"] > 0
    assert data["reload_max_abs_diff"] <= 1e-4
    model = AutoModelForCausalLM.from_pretrained(out)
    after = data["shrink"]["shape_after"]
    assert model.config.hidden_size == after["hidden"] and model.config.intermediate_size == after["ffn"]
    saved = json.loads((out / "prunekit.json").read_text())
    assert saved["perplexity"] == data["perplexity"] and (out / "report.txt").read_text().startswith("prunekit")


def test_per_layer_search_saves_bf16_that_load_shrunk_reads_back(tiny_folder, tmp_path, capsys):
    import torch
    from safetensors import safe_open

    from prunekit.shrink import layer_shapes_of, load_shrunk

    out = tmp_path / "layers"
    assert main(_args(tiny_folder, out, "--json", "--search", "per-layer", "--axes", "heads,neurons,depth",
                      "--optimizer", "greedy", "--score-windows", "2", "--kd-steps", "2", "--kd-batch", "2",
                      "--kd-seqlen", "32", "--dtype", "bf16")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["shrink"]["search"] == "per-layer" and data["shrink"]["non_embedding_kept"] <= 0.6
    assert data["dtype"] == "bf16" and data["reload_max_abs_diff"] <= 1e-4  # bf16 both sides, same kernels
    assert set(data["perplexity"]) == {"dense", "shrunk", "distilled", "saved_bf16"}
    model = load_shrunk(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    after = data["shrink"]["after"]
    assert list(layer_shapes_of(model).ffn) == after["intermediate_size"]


def test_resume_continues_the_distillation_from_its_checkpoint(tiny_folder, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    common = ("--json", "--kd-steps", "4", "--kd-batch", "2", "--kd-seqlen", "32", "--checkpoint", str(ckpt),
              "--checkpoint-every", "2")
    assert main(_args(tiny_folder, tmp_path / "a", *common)) == 0
    first = json.loads(capsys.readouterr().out)
    assert json.loads((ckpt / "prunekit.json").read_text())["step"] == 4
    assert main(_args(tiny_folder, tmp_path / "b", *common, "--resume")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["distill"]["resumed_from"] == 4 and resumed["distill"]["steps"] == 0
    assert resumed["shrink"]["shape_after"] == first["shrink"]["shape_after"]
    # the same weights, read back from the checkpoint: the same perplexity up to float32 rounding
    assert resumed["perplexity"]["distilled"] == pytest.approx(first["perplexity"]["distilled"], rel=1e-5)
    assert main(_args(tiny_folder, tmp_path / "c", *common[:-2], "--checkpoint-every", "3", "--resume")) == 2
    assert "different command" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (("--target", "params=0.01"), "cannot be reached"),
    (("--target", "speed=100"), "cannot be reached with axes heads, neurons: the fastest per-layer shape"),
    (("--target", "speed=1.5", "--search", "uniform"), "searched per layer: use --search per-layer"),
    (("--optimizer", "greedy"), "--optimizer applies to --search per-layer"),
    (("--search", "per-layer", "--axes", "hidden"), "cut the residual width with the uniform search first"),
    (("--axes", "heads,width"), "unknown axis 'width'"),
    (("--resume", "--kd-steps", "2"), "--resume continues from a checkpoint"),
    (("--checkpoint", "x"), "--checkpoint applies to distillation"),
    (("--kd-steps", "-1"), "--kd-steps must be 0 or more"),
    (("--recover", "lora", "--lora-rank", "0", "--kd-steps", "2"), "--lora-rank must be a positive integer, got 0"),
    (("--lora-rank", "4", "--kd-steps", "2"), "--lora-rank is the rank of --recover lora's adapters"),
    (("--recover", "next-token"), "--recover applies to distillation, which --kd-steps 0 turns off"),
    (("--kd-hidden-weight", "1", "--kd-steps", "2"),  # the uniform search's default axes cut the residual width
     "--kd-hidden-weight compares residual streams, which --axes hidden cuts"),
    (("--kd-hidden-weight", "-1", "--kd-steps", "2"), "--kd-hidden-weight must be 0 or more"),
    (("--recover", "next-token", "--kd-ce-weight", "0.5", "--kd-steps", "2"),
     "--recover next-token trains on that cross-entropy alone"),
    (("--recover", "lora", "--kd-steps", "2", "--checkpoint", "x"), "--recover lora trains adapters that checkpoints"),
    (("--rounds", "2"), "--rounds counts the cuts of --schedule adapt"),
    (("--schedule", "adapt", "--search", "uniform", "--kd-steps", "4"), "--schedule adapt cuts per layer"),
    (("--schedule", "adapt", "--target", "speed=1.5", "--kd-steps", "4"), "--schedule adapt cuts to params= or memory="),
    (("--schedule", "adapt", "--rounds", "3", "--kd-steps", "2"), "--kd-steps (2) must be at least --rounds (3)"),
    (("--schedule", "adapt", "--kd-steps", "1"), "--kd-steps (1) must be at least --rounds (4)"),  # AdaptConfig's 4
    (("--schedule", "adapt", "--rounds", "2", "--kd-steps", "2", "--checkpoint", "x"),
     "--checkpoint applies to --schedule one-shot's distillation"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(_args(tiny_folder, out, "--quiet", *extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunekit shrink:")]
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_bad_recovery_input_is_refused_before_the_model_is_loaded(tiny_folder, tmp_path, capsys, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("prunekit.models.hf.load_model", no_loading)
    for extra in (("--recover", "lora", "--lora-rank", "0", "--kd-steps", "2"),
                  ("--schedule", "adapt", "--rounds", "3", "--kd-steps", "2")):
        assert main(_args(tiny_folder, tmp_path / "never", "--quiet", *extra)) == 2
        assert "prunekit shrink:" in capsys.readouterr().err


def test_next_token_recovery_with_no_text_is_refused_before_the_cut(tiny_folder, tmp_path, capsys, monkeypatch):
    def no_cut(*a, **k):
        raise AssertionError("the model was cut before the recovery's text was read")

    monkeypatch.setattr("prunekit.shrink.shrink_", no_cut)
    out = tmp_path / "never"
    assert main(_args(tiny_folder, out, "--quiet", "--recover", "next-token", "--kd-steps", "2",
                      "--kd-text", str(tmp_path / "no-such-text"))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunekit shrink:")]
    assert len(err) == 1 and "unknown text source" in err[0] and not out.exists()


@pytest.mark.parametrize("extra, fields, label", [
    (("--recover", "next-token"), {"objective": "next_token", "train": "full", "ce_weight": 0.0},
     "next-token fine-tuning"),
    (("--recover", "lora", "--lora-rank", "2", "--kd-ce-weight", "0.5"),
     {"objective": "kd", "train": "lora", "lora_rank": 2, "ce_weight": 0.5}, "LoRA distillation"),
    (("--kd-hidden-weight", "0.5", "--axes", "heads,neurons,depth"), {"objective": "kd", "hidden_weight": 0.5},
     "distillation"),
    (("--kd-precision", "bf16",), {"objective": "kd", "precision": "bf16"}, "distillation"),
])
def test_recovery_alternatives_save_a_model_that_reloads(tiny_folder, tmp_path, capsys, extra, fields, label):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "recovered"
    assert main(_args(tiny_folder, out, "--json", "--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "32",
                      *extra)) == 0
    data = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "prunekit.json").read_text())
    assert {k: saved["run"]["kd"][k] for k in fields} == fields  # the recovery that ran is the one asked for
    assert data["distill"]["steps"] == 2 and data["distill"]["tokens"] == 2 * 2 * 32
    assert set(data["perplexity"]) == {"dense", "shrunk", "distilled"}
    assert data["reload_max_abs_diff"] <= 1e-4 and data["read_back_with"] == "from_pretrained"
    model = AutoModelForCausalLM.from_pretrained(out)  # LoRA merged: plain weights, no adapter left behind
    dense = AutoModelForCausalLM.from_pretrained(tiny_folder / "model")
    assert model.state_dict().keys() == dense.state_dict().keys()
    assert model.config.intermediate_size == data["shrink"]["shape_after"]["ffn"]
    assert (out / "report.txt").read_text().splitlines()[2].startswith(f"{label}: 2 steps")


def test_adapt_schedule_reaches_the_one_shot_target_in_rounds(tiny_folder, tmp_path, capsys):
    import math

    from prunekit.shrink import load_shrunk
    from prunekit.shrink.budget import non_embedding_params

    common = ("--json", "--search", "per-layer", "--score-windows", "2", "--kd-steps", "2", "--kd-batch", "2",
              "--kd-seqlen", "32")
    assert main(_args(tiny_folder, tmp_path / "one", *common)) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(_args(tiny_folder, tmp_path / "adapt", *common, "--schedule", "adapt", "--rounds", "2")) == 0
    adapt = json.loads(capsys.readouterr().out)
    dense = one["shrink"]["non_embedding_before"]
    assert adapt["schedule"] == "adapt" and adapt["shrink"]["target"] == one["shrink"]["target"] == "params=0.6"
    assert adapt["shrink"]["non_embedding_before"] == dense
    for run in (one, adapt):  # both end within the budget, counted against the dense model
        assert run["shrink"]["non_embedding_after"] <= math.floor(0.6 * dense)
    rounds = adapt["shrink"]["rounds"]
    assert [r["target"] for r in rounds] == ["params=0.8000", "params=0.6000"]
    assert [r["distill"]["tokens"] for r in rounds] == [2 * 32, 2 * 32]  # one step each: the one-shot's 2 in all
    assert adapt["distill"]["tokens"] == one["distill"]["tokens"] == 2 * 2 * 32 and adapt["distill"]["rounds"] == 2
    assert set(adapt["perplexity"]) == {"dense", "distilled"}  # no model is only cut, never trained
    saved = json.loads((tmp_path / "adapt" / "prunekit.json").read_text())
    assert saved["shrink"] == adapt["shrink"] and saved["distill"] == adapt["distill"]
    report = (tmp_path / "adapt" / "report.txt").read_text()
    assert "round 1: params=0.8000" in report and "round 2: params=0.6000" in report
    assert "over 2 rounds: 2 steps" in report
    back = load_shrunk(tmp_path / "adapt")
    assert non_embedding_params(back) == adapt["shrink"]["non_embedding_after"]
    assert adapt["reload_max_abs_diff"] <= 1e-4


def test_unsupported_family_is_refused_before_writing(tmp_path, capsys):
    from prunekit.models.tiny import tiny_model, tiny_tokenizer, write_tiny_folder

    tok = tiny_tokenizer()
    root = write_tiny_folder(tmp_path / "gpt2", tiny_model("gpt2", vocab_size=tok.vocab_size), tok)
    assert main(_args(root, tmp_path / "never")) == 2
    assert "supports the Hugging Face decoders" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_timing_compares_the_dense_model_with_the_shrunk_one(tiny_folder, tmp_path, capsys, monkeypatch):
    import prunekit.metrics.generation as generation

    seen = {}
    real = generation.compare_generation

    def spy(models, tokenizer, **kw):
        seen.update({n: m.config.hidden_size * m.config.intermediate_size for n, m in models.items()})
        return real(models, tokenizer, min_rounds=1, max_rounds=1, warmup=0, new_tokens=4, threads=1)

    monkeypatch.setattr(generation, "compare_generation", spy)
    out = tmp_path / "timed"
    assert main([a for a in _args(tiny_folder, out, "--json", "--target", "params=0.4") if a != "--no-time"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert seen["dense"] == 64 * 128 and seen["shrunk"] < seen["dense"]  # not the shrunk model timed twice
    assert data["generation"]["dense"]["tokens"] == 4 and data["generation"]["speedup"] > 0


def test_vocab_trims_the_saved_model_and_tokenizer(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, texts = tmp_path / "trimmed", _few_words(tmp_path)
    assert main(_args(tiny_folder, out, "--json", "--vocab", str(texts))) == 0
    data = json.loads(capsys.readouterr().out)
    before = AutoTokenizer.from_pretrained(tiny_folder / "model")
    vocab = data["vocab"]
    assert vocab["vocab_before"] == len(before) and vocab["vocab_after"] < vocab["vocab_before"]
    assert vocab["fallback"] == "bytes" and "vocab" in data["perplexity"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == vocab["vocab_after"]
    from prunekit.export.gguf_vocab import kept_token_ids

    kept = kept_token_ids(out)  # the old ids, for cutting a source GGUF's tokenizer alike
    assert len(kept) == vocab["vocab_after"] and kept == sorted(kept)
    assert [before.convert_ids_to_tokens(i) for i in kept] == tok.convert_ids_to_tokens(list(range(len(tok))))
    text = (tiny_folder / "texts" / "page00.txt").read_text()  # held out from the vocabulary: more, smaller pieces
    assert len(tok(text)["input_ids"]) > len(before(text)["input_ids"])
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def _few_words(tmp_path):
    texts = tmp_path / "few-words"
    texts.mkdir()
    for i in range(10):  # a text of few words: most of the tokenizer's merged tokens go
        (texts / f"p{i}.txt").write_text("Modules group functions and classes. " * 5)
    return texts


def test_vocab_is_cut_before_the_distillation_in_student_and_teacher(tiny_folder, tmp_path, capsys, monkeypatch):
    import prunekit.shrink.distill as distill

    seen = {}
    real = distill.distill_

    def spy(student, teacher, windows, config, **kw):
        first = next(iter(windows))
        seen.update(student=student.config.vocab_size, teacher=teacher.config.vocab_size,
                    teacher_rows=teacher.get_output_embeddings().weight.shape[0], max_id=int(first.max()))
        return real(student, teacher, windows, config, **kw)

    monkeypatch.setattr(distill, "distill_", spy)
    kd = ("--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "32")
    out = tmp_path / "cut"
    assert main(_args(tiny_folder, out, "--json", "--vocab", str(_few_words(tmp_path)), *kd)) == 0
    data = json.loads(capsys.readouterr().out)
    after = data["vocab"]["vocab_after"]
    assert seen["student"] == seen["teacher"] == seen["teacher_rows"] == after < data["vocab"]["vocab_before"]
    assert seen["max_id"] < after  # the text is read in the cut tokenizer's ids
    assert list(data["perplexity"]) == ["dense", "shrunk", "vocab", "distilled"]
    assert data["distill"]["tokens"] == 2 * 2 * 32 and data["reload_max_abs_diff"] <= 1e-4


def test_resume_after_a_vocabulary_cut_keeps_the_cut(tiny_folder, tmp_path, capsys):
    texts, ckpt = _few_words(tmp_path), tmp_path / "ckpt"
    common = ("--json", "--vocab", str(texts), "--kd-steps", "4", "--kd-batch", "2", "--kd-seqlen", "32",
              "--checkpoint", str(ckpt), "--checkpoint-every", "2")
    assert main(_args(tiny_folder, tmp_path / "a", *common)) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(_args(tiny_folder, tmp_path / "b", *common, "--resume")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["distill"]["resumed_from"] == 4 and resumed["vocab"] == first["vocab"]
    assert resumed["perplexity"]["distilled"] == pytest.approx(first["perplexity"]["distilled"], rel=1e-5)
    assert resumed["perplexity"]["vocab"] == first["perplexity"]["vocab"]


def test_vocab_of_a_missing_text_is_refused_before_writing(tiny_folder, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(_args(tiny_folder, out, "--quiet", "--vocab", str(tmp_path / "nope"))) == 2
    assert "unknown text source" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("extra,message", [
    (("--target", "speed=1.5", "--speed-engine", "llama.cpp"), "llama-bench, which is not built"),
    (("--speed-engine", "llama.cpp"), "--speed-engine applies to --target speed=, and the target is params=0.6"),
    (("--target", "speed=1.5", "--speed-quant", "f16"), "--speed-quant is the GGUF type timed in llama.cpp"),
    (("--target", "speed=1.5", "--speed-engine", "llama.cpp", "--speed-quant", "q9"), "q9"),
    (("--width-multiple", "0"), "the width multiple must be a positive integer"),
])
def test_speed_in_llama_cpp_refuses_bad_input_before_loading(tiny_folder, tmp_path, capsys, monkeypatch, extra,
                                                               message):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("prunekit.models.hf.load_model", no_loading)
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool",
                        lambda name: None if "q9" not in extra else "/bin/true")
    out = tmp_path / "never"
    assert main(_args(tiny_folder, out, "--quiet", *extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunekit shrink:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_k_quant_speed_quant_refuses_a_width_multiple_that_leaves_rows_unfilled(tiny_folder, tmp_path, capsys,
                                                                                  monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("prunekit.models.hf.load_model", no_loading)
    monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
    out = tmp_path / "never"
    assert main(_args(tiny_folder, out, "--quiet", "--target", "speed=1.5", "--speed-engine", "llama.cpp",
                      "--speed-quant", "q4_K_M", "--width-multiple", "32")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prunekit shrink:")]
    assert len(err) == 1 and "--width-multiple 32 leaves rows that q4_K_M's 256-wide super-blocks" in err[0], err
    assert not out.exists()
