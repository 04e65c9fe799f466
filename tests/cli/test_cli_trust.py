"""The command line never loses a file, never shows a traceback, and never ignores an option silently."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.cli import main
from prunekit.infra.atomic import output_folder

BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s|s/it|\r")


def _prune(root, out, *extra):
    return ["prune", "--model", str(root / "model"), "--calib", str(root / "texts"), "--nsamples", "2",
            "--seqlen", "32", "--eval-windows", "2", "--out", str(out), "--quiet", "--method", "magnitude", *extra]


def _one_error_line(err, command="prune"):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"prunekit {command}: ") and "Traceback" not in err
    return lines[0]


def _hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------- --overwrite


def test_overwrite_never_replaces_the_current_folder_or_a_project(tiny_folder, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    monkeypatch.chdir(project)
    for out in (".", "src", str(project)):
        assert main(_prune(tiny_folder, out, "--overwrite")) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "current folder" in line or "prunekit did not write" in line
    assert (project / "src" / "main.py").read_text() == "print('mine')"
    assert sorted(p.name for p in project.rglob("*")) == ["main.py", "src"]


def test_saved_files_follow_the_umask(tiny_folder, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(_prune(tiny_folder, tmp_path / "out")) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}  # transformers leaves 0600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_a_second_run_to_the_same_out_fails_instead_of_replacing(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    with output_folder(out) as first:  # a first run is writing --out
        assert main(_prune(tiny_folder, out)) == 1
        assert "being written by another prunekit run" in _one_error_line(capsys.readouterr().err)
        (first / "prunekit.json").write_text(json.dumps({"prunekit_version": "0", "run": "first"}))
    assert json.loads((out / "prunekit.json").read_text())["run"] == "first"
    assert main(_prune(tiny_folder, out)) == 2  # and after it: not replaced without --overwrite
    assert "exists and is not empty" in _one_error_line(capsys.readouterr().err)
    assert json.loads((out / "prunekit.json").read_text())["run"] == "first"


@pytest.mark.parametrize("out, match", [("file.txt/pruned", "file.txt is a file, not a folder"),
                                        ("/proc/pruned", "does not take new files")])
def test_an_out_that_cannot_be_written_is_found_before_loading(tiny_folder, tmp_path, monkeypatch, capsys, out, match):
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.chdir(tmp_path)

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("prunekit.models.hf.load_model", no_loading)
    assert main(_prune(tiny_folder, out)) == 2
    assert match in _one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_a_failure_or_ctrl_c_part_way_leaves_no_partial_folder(tiny_folder, tmp_path, monkeypatch, capsys):
    import prunekit.pipeline.lm as prune_cli  # the save stage writes the folder

    out = tmp_path / "out"
    assert main(_prune(tiny_folder, out)) == 0
    before = (out / "model.safetensors").read_bytes()
    real_save = prune_cli.save_pruned
    for error, code in ((KeyboardInterrupt(), 130), (OSError(28, "No space left on device"), 1)):
        def half_save(*args, error=error):
            real_save(*args)
            raise error

        monkeypatch.setattr(prune_cli, "save_pruned", half_save)
        assert main(_prune(tiny_folder, out, "--overwrite")) == code
        line = _one_error_line(capsys.readouterr().err)
        assert ("interrupted" in line) if code == 130 else ("no space left" in line)
        assert (out / "model.safetensors").read_bytes() == before and os.listdir(tmp_path) == ["out"]


# ------------------------------------------------------------------------------ one line per failure


def _faulty(tiny_folder, tmp_path, fault):
    folder = tmp_path / fault
    shutil.copytree(tiny_folder / "model", folder)
    weights = folder / "model.safetensors"
    if fault == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif fault == "empty":
        weights.write_bytes(b"")
    elif fault == "no-weights":
        weights.unlink()
    elif fault == "corrupt-config":
        (folder / "config.json").write_text('{"model_type": "llama", ')
    elif fault == "pickle":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    return folder


@pytest.mark.parametrize("fault, match", [
    ("truncated", "weights file .* is truncated or corrupt"),
    ("empty", "weights file .* is truncated or corrupt"),
    ("no-weights", "has config.json but no weights"),
    ("corrupt-config", "config.json is not valid JSON"),
    ("pickle", "does not unpickle"),
])
@pytest.mark.parametrize("command", ["prune", "eval"])
def test_every_model_file_fault_is_one_line_and_exit_2(tiny_folder, tmp_path, capsys, fault, match, command):
    folder = _faulty(tiny_folder, tmp_path, fault)
    argv = (["prune", "--model", str(folder), "--out", str(tmp_path / "out"), "--quiet"] if command == "prune"
            else ["eval", "--model", str(folder), "--quiet"])
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert re.search(match, line), line
    assert not (tmp_path / "out").exists() and _hidden(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00" + b"\x00" * 7, b"not a gguf file at all"])
def test_a_bad_gguf_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert main(["eval", "--model", str(path)]) == 2
    assert "is not a readable GGUF file" in _one_error_line(capsys.readouterr().err, "eval")


def test_summary_weights_faults_are_one_line(tmp_path, capsys):
    bad = {"truncated.pt": b"PK\x03\x04 truncated", "evil.pt": None, "w.safetensors": b"\x05\x00"}
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name, content in bad.items():
        path = tmp_path / name
        path.write_bytes(content if content is not None else pickle.dumps(Evil()))
        assert main(["summary", "--model", "mlp", "--weights", str(path)]) == 2
        line = _one_error_line(capsys.readouterr().err, "summary")
        assert {"truncated.pt": "not a readable torch file", "evil.pt": "does not unpickle",
                "w.safetensors": "not a readable safetensors file"}[name] in line


def test_an_internal_error_is_one_line_with_exit_1_and_debug_shows_the_traceback(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("something inside broke\nwith a second line")

    monkeypatch.setattr("prunekit.metrics.summary.summary", boom)
    assert main(["summary", "--model", "mlp"]) == 1
    line = _one_error_line(capsys.readouterr().err, "summary")
    assert line == ("prunekit summary: error: RuntimeError: something inside broke with a second line "
                    "(rerun with --debug for the traceback)")
    for argv in (["--debug", "summary", "--model", "mlp"], ["summary", "--model", "mlp", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().endswith("with a second line")


def test_permission_errors_are_one_line_with_exit_1(monkeypatch, capsys):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/data/w.safetensors")

    monkeypatch.setattr("prunekit.metrics.summary.summary", denied)
    assert main(["summary", "--model", "mlp"]) == 1
    assert "permission denied: /data/w.safetensors" in _one_error_line(capsys.readouterr().err, "summary")


# ------------------------------------------------------------------- options accepted and ignored


@pytest.mark.parametrize("extra, match", [
    (["--structured", "heads", "--method", "wanda"], "--method applies to weight pruning .* with --structured"),
    (["--structured", "heads", "--sparsity", "1.5"], r"--sparsity must be a number in \[0, 1\).* \(with --structured\)"),
    (["--structured", "neurons", "--allocation", "owl"], "--allocation applies to weight pruning"),
    (["--ratio", "0.3"], "--ratio applies only with --structured"),
    (["--pattern", "2:4", "--allocation", "owl"], "--allocation does not apply to the N:M pattern 2:4"),
    (["--device", "cuda"], "--device applies to the calibrated methods"),
    (["--seqlen", "5000"], r"--seqlen 5000 is longer than the context .*\(2048 tokens"),
    (["--seed", "-1"], "--seed must be 0 or more"),
])
def test_options_that_would_be_ignored_or_cannot_work_are_errors(tiny_folder, tmp_path, capsys, extra, match):
    argv = _prune(tiny_folder, tmp_path / "out", *extra)
    if "--structured" in extra:
        argv.remove("--method"), argv.remove("magnitude")
    assert main(argv) == 2
    assert re.search(match, _one_error_line(capsys.readouterr().err)), match
    assert os.listdir(tmp_path) == []


def test_structured_with_method_is_an_error(tiny_folder, tmp_path, capsys):
    assert main(_prune(tiny_folder, tmp_path / "out", "--structured", "heads")) == 2
    assert "--method applies to weight pruning" in _one_error_line(capsys.readouterr().err)


def test_a_tokenizer_larger_than_the_models_vocabulary_is_named(tiny_folder, tmp_path, capsys):
    from prunekit.models.hf import tiny_model

    folder = tmp_path / "small-vocab"
    shutil.copytree(tiny_folder / "model", folder)
    tiny_model("llama", vocab_size=40).save_pretrained(folder)
    capsys.readouterr()
    for argv in (_prune(tiny_folder, tmp_path / "out", "--method", "wanda"),
                 ["eval", "--model", str(folder), "--ppl", str(tiny_folder / "texts"), "--windows", "2",
                  "--seqlen", "32", "--quiet"]):
        argv[argv.index("--model") + 1] = str(folder)
        assert main(argv) == 2
        assert "outside the model's vocabulary of 40" in _one_error_line(capsys.readouterr().err, argv[0])


@pytest.mark.parametrize("argv, match", [
    (["summary", "--model", "mlp", "--batch", "0"], "--batch must be a positive integer"),
    (["summary", "--model", "mlp", "--latency", "1,0"], "--latency batch sizes must be positive"),
    (["demo", "--data", "digits", "--train-size", "500"], "--train-size applies to Fashion-MNIST"),
    (["demo", "--data", "digits", "--seed", "-2"], "--seed must be 0 or more"),
    (["demo", "--data", "digits", "--sparsities", "0.5,1.5"], r"--sparsities must be a number in \[0, 1\)"),
    (["demo", "--data", "digits", "--epochs", "0"], "--epochs must be a positive number"),
    (["demo", "--data", "digits", "--finetune-steps", "-1"], "--finetune-steps must be 0 or more"),
    (["eval", "--model", "x", "--gen-tokens", "0"], "--gen-tokens must be an integer of at least 1"),
    (["eval", "--model", "x", "--windows", "0"], "--windows must be an integer of at least 1"),
])
def test_other_commands_check_their_options(capsys, argv, match):
    assert main(argv) == 2
    assert re.search(match, _one_error_line(capsys.readouterr().err, argv[0]))


def test_eval_seqlen_longer_than_the_context_is_an_error(tiny_folder, capsys):
    assert main(["eval", "--model", str(tiny_folder / "model"), "--seqlen", "4096", "--quiet"]) == 2
    assert "longer than the context" in _one_error_line(capsys.readouterr().err, "eval")


def test_eval_options_an_encoder_ignores_are_a_warning(tiny_folder, tmp_path, capsys):
    from transformers import AutoTokenizer

    from prunekit.models.hf import tiny_model

    folder = tmp_path / "bert"
    tiny_model("bert", vocab_size=300).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_folder / "model").save_pretrained(folder)
    capsys.readouterr()
    assert main(["eval", "--model", str(folder), "--windows", "3", "--no-load-memory", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["perplexity"] is None
    assert "warning: " in captured.err and "not a causal LM" in captured.err and "--windows is ignored" in captured.err


# ------------------------------------------------------------------------------------ --json / --quiet


def test_json_is_one_document_and_no_progress_bar(tiny_folder, tmp_path, capfd):
    argv = _prune(tiny_folder, tmp_path / "a", "--method", "wanda")
    argv.remove("--quiet")
    assert main(argv) == 0
    assert BAR.search(capfd.readouterr().err)  # without --json the bars are there (the check can fail)
    assert main(_prune(tiny_folder, tmp_path / "b", "--method", "wanda")[:-1] + ["wanda", "--json"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["method"] == "wanda"
    assert not BAR.search(captured.err), captured.err
    assert "loading" not in captured.err and "measuring" not in captured.err


# ----------------------------------------------------------------------------------- real processes

CLI = "import sys\n"


def _env(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=os.pathsep.join(sys.path))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


@pytest.mark.slow
def test_ctrl_c_during_sparsegpt_exits_130_with_one_line_and_leaves_nothing(tiny_folder, tmp_path):
    ready = tmp_path / "ready"
    script = CLI + f"""
import time
from pathlib import Path
import prunekit.methods.sparsegpt as sg
real = sg.SparseGPT.prune_layer
def slow(self, *a, **k):
    real(self, *a, **k)
    Path({str(ready)!r}).touch()
    time.sleep(60)
sg.SparseGPT.prune_layer = slow
from prunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""
    out = tmp_path / "out"
    argv = _prune(tiny_folder, out)
    argv[argv.index("magnitude")] = "sparsegpt"
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], env=_env(tmp_path), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), proc.stderr.read().decode() if proc.poll() is not None else "not ready"
    assert any(p.name.startswith("prunekit-journal-") for p in (tmp_path / "tmp").iterdir())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted (Ctrl-C)" in _one_error_line(err.decode())
    assert sorted(os.listdir(tmp_path)) == ["ready", "tmp"] and os.listdir(tmp_path / "tmp") == []


@pytest.mark.slow
def test_json_in_a_fresh_process_prints_one_document_and_no_bars(tiny_folder, tmp_path):
    argv = _prune(tiny_folder, tmp_path / "out", "--json")
    argv.remove("--quiet")
    argv[argv.index("magnitude")] = "wanda"
    proc = subprocess.run([sys.executable, "-c", CLI + "from prunekit.cli import main\nsys.exit(main(sys.argv[1:]))",
                           *argv], env=_env(tmp_path), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["method"] == "wanda"
    assert not BAR.search(proc.stderr.decode()), proc.stderr.decode()
