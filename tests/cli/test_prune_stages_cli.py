"""``prunekit prune`` as a list of stages: every option belongs to a stage, an option whose stage does not
run is an error found in one place, and the errors a user meets before any work name what to change."""

import json
import os
import re
import shutil

import pytest

from prunekit.cli import build_parser, main
from prunekit.pipeline import STAGES


def _prune(root, out, *extra):
    return ["prune", "--model", str(root / "model"), "--calib", str(root / "texts"), "--seqlen", "32",
            "--eval-windows", "2", "--out", str(out), "--quiet", *extra]


def _one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("prunekit prune: error: ") and "Traceback" not in err, err
    return lines[0]


def test_every_prune_option_belongs_to_a_stage():
    parser = build_parser()
    prune = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "prune")[1]
    options = {s for a in prune._actions for s in a.option_strings if s.startswith("--")}
    staged = {flag for kind in STAGES.names() for flag in STAGES.get(kind).flags}
    common = {"--help", "--json", "--quiet", "--debug", "--ratio"}  # --ratio: the deprecated name of --sparsity
    assert options - common == staged, (options - common) ^ staged


@pytest.mark.parametrize("extra, match", [
    (["--method", "magnitude", "--recover-lr", "1e-3"],
     "--recover-lr would be ignored: the options of recovery go with --recover, which is not given"),
    (["--method", "magnitude", "--recover-steps", "5", "--recover-seqlen", "16"],
     "--recover-seqlen, --recover-steps would be ignored: the options of recovery go with --recover"),
    (["--method", "magnitude", "--slice-head", "tied"], "--slice-head would be ignored: the options of slicing go with "
                                                        "--slice, which is not given"),
    (["--method", "magnitude", "--slice-rotation", "per_layer"], "--slice-rotation would be ignored"),
    (["--method", "magnitude", "--calib", "none", "--nsamples", "4"],
     "--nsamples would be ignored: the options of calibration go with calibration text, and --calib none gives none"),
    (["--method", "magnitude", "--calib", "none", "--seed", "3"], "--seed would be ignored"),
    (["--method", "magnitude", "--device", "cuda"],
     r"--device applies to the calibrated methods \(alps, dsnot, ria, sparsegpt, wanda\), not to magnitude"),
    (["--slice", "0.25", "--pattern", "2:4"], "--pattern applies to weight pruning .* ignored with --slice"),
    (["--structured", "heads", "--slice", "0.2"], "--slice replaces the weights .* and --structured removes whole "
                                                  "heads.*two different prunings; pick one"),
    (["--method", "wanda", "--calib", "none"], "--method wanda needs calibration text"),
    (["--structured", "layers", "--calib", "none"], "--structured ranks blocks on calibration text, but --calib none"),
])
def test_an_option_whose_stage_does_not_run_is_an_error_before_any_work(tiny_folder, tmp_path, capsys, monkeypatch,
                                                                         extra, match):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("prunekit.models.hf.load_model", no_loading)
    argv = _prune(tiny_folder, tmp_path / "out", *extra)
    if "none" in extra:
        del argv[argv.index("--calib"):argv.index("--calib") + 2]
    assert main(argv) == 2
    assert re.search(match, _one_error_line(capsys.readouterr().err)), match
    assert os.listdir(tmp_path) == []


def test_recover_with_too_few_windows_names_nsamples_before_pruning(tiny_folder, tmp_path, capsys, monkeypatch):
    def no_pruning(*a, **k):
        raise AssertionError("pruned before the recovery was checked")

    monkeypatch.setattr("prunekit.methods.apply_plan_", no_pruning)
    assert main(_prune(tiny_folder, tmp_path / "out", "--method", "magnitude", "--nsamples", "2", "--recover",
                       "lora")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "batches of 4 windows, but the 2 calibration windows give 2" in line and "(--nsamples 4)" in line
    assert os.listdir(tmp_path) == []


def test_a_calibration_file_of_one_paragraph_says_how_texts_are_split(tiny_folder, tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text("A single paragraph of text.\nIt has several lines but no blank line between them.\n" * 20)
    argv = _prune(tiny_folder, tmp_path / "out", "--method", "magnitude", "--nsamples", "2")
    argv[argv.index("--calib") + 1] = str(one)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "split into calibration and evaluation by whole documents" in line
    assert "a file's paragraphs, separated by blank lines" in line and "this one holds 1, 0 of them" in line
    assert sorted(os.listdir(tmp_path)) == ["one.txt"]


def test_a_config_that_disagrees_with_the_weights_says_what_differs_when_quiet(tiny_folder, tmp_path, capsys):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_folder / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] += 10
    (folder / "config.json").write_text(json.dumps(config))
    argv = _prune(tiny_folder, tmp_path / "out", "--method", "magnitude", "--nsamples", "2")
    argv[argv.index("--model") + 1] = str(folder)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    n = config["vocab_size"]
    assert "config.json disagrees with the weights" in line and "look at the above report" not in line
    assert re.search(rf"embed_tokens.weight is \[{n - 10}, \d+\] in the weights but \[{n}, \d+\] by config.json", line)


@pytest.mark.parametrize("extra", [["--method", "sparsegpt", "--pattern", "2:4", "--seed", "1"],
                                   ["--structured", "neurons", "--sparsity", "0.5"]])
def test_the_cli_stages_are_the_python_stages(tiny_folder, tmp_path, capsys, extra):
    """The stages the options turn into, run from Python, give the same model as the command line."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.cli.prune import build_stages
    from prunekit.pipeline import Workspace, parse_stage, run_stages, stage_dict

    argv = _prune(tiny_folder, tmp_path / "cli", "--nsamples", "4", *extra)
    assert main(argv) == 0
    capsys.readouterr()
    args = build_parser().parse_args(argv)
    stages = build_stages(args)
    again = [parse_stage(stage_dict(k, c)) for k, c in stages]  # each config round-trips as plain data
    assert again == stages
    again[-1] = ("save", again[-1][1].replace(out=str(tmp_path / "py")))
    run_stages(again, Workspace(progress=False))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "cli").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "py").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same stages, same data: same bits


@pytest.mark.parametrize("extra", [["--target", "params=0.6", "--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "16"],
                                   ["--target", "params=0.7", "--search", "per-layer", "--axes", "heads,neurons,depth",
                                    "--score-windows", "2"],
                                   ["--target", "params=0.6", "--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "16",
                                    "--recover", "lora", "--lora-rank", "2", "--kd-ce-weight", "0.5"],
                                   ["--target", "params=0.6", "--schedule", "adapt", "--rounds", "2", "--score-windows",
                                    "2", "--kd-steps", "2", "--kd-batch", "2", "--kd-seqlen", "16"]])
def test_prunekit_shrink_is_the_shrink_stage(tiny_folder, tmp_path, capsys, extra):
    """``prunekit shrink``'s options name a shrink stage (after load and calibrate); run from Python, the stages
    give the model the command line saved."""
    import torch

    from prunekit.cli.shrink import _check_args
    from prunekit.models.hf import load_model
    from prunekit.pipeline import Workspace, parse_stage, run_stages, stage_dict

    argv = ["shrink", "--model", str(tiny_folder / "model"), "--calib", str(tiny_folder / "texts"), "--nsamples", "4",
            "--seqlen", "16", "--eval-windows", "2", "--candidates", "2", "--no-time", "--quiet", "--out",
            str(tmp_path / "cli"), *extra]
    assert main(argv) == 0
    capsys.readouterr()
    args = build_parser().parse_args(argv)
    _check_args(args)
    stages = [parse_stage({"stage": "load", "model": str(tiny_folder / "model")}),
              parse_stage({"stage": "calibrate", "source": str(tiny_folder / "texts"), "nsamples": 4, "seqlen": 16}),
              parse_stage(stage_dict("shrink", args.stage_)),
              parse_stage({"stage": "save", "out": str(tmp_path / "py")})]
    ws = run_stages(stages, Workspace(progress=False))
    assert ws.records[2]["search"] == ("per-layer" if "per-layer" in extra or "adapt" in extra else "uniform")
    assert ws.records[2]["schedule"] == ("adapt" if "adapt" in extra else "one-shot")
    if "lora" in extra:  # the non-default recovery reached the stage's distillation
        assert args.stage_.distill.train == "lora" and args.stage_.distill.lora_rank == 2
        assert args.stage_.distill.ce_weight == 0.5
    a, b = load_model(tmp_path / "cli").model.state_dict(), load_model(tmp_path / "py").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same stages, same data: same bits
