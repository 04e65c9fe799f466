import json

import pytest

from prunekit.cli import main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "summary" in out and "demo" in out


def test_summary_json(capsys):
    assert main(["summary", "--model", "small-cnn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == 94186
    assert data["totals"]["macs"] > 0


def test_summary_of_saved_sparse_weights(tmp_path, capsys):
    import prunekit as pk
    from prunekit.models import SmallCNN

    model = SmallCNN()
    pk.prune_(model, "magnitude", 0.75)
    pk.save_sparse(model, tmp_path / "w.safetensors")
    assert main(["summary", "--model", "small-cnn", "--weights", str(tmp_path / "w.safetensors"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    masked = [r for r in data["layers"] if r["name"] in ("features.4", "features.8")]
    assert all(r["sparsity"] == pytest.approx(0.75) for r in masked)


def test_unknown_model_is_an_error_exit(capsys):
    assert main(["summary", "--model", "gpt-17"]) == 2
    assert "known: mlp, resnet, small-cnn" in capsys.readouterr().err


def test_demo_on_digits_prints_a_table_and_json(capsys):
    args = ["demo", "--data", "digits", "--epochs", "5", "--sparsities", "0.5", "--finetune-steps", "5", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "magnitude" in out and "synflow" in out and "acc. tuned" in out
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["data"] == "digits" and len(data["runs"]) == 6
    assert all(r["sparsity"] == pytest.approx(0.5, abs=0.01) for r in data["runs"])
    assert data["dense"]["accuracy"] > 0.8


def test_summary_with_latency(capsys):
    assert main(["summary", "--model", "mlp", "--latency", "1,32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["totals"]["latency_ms"]) == {"1", "32"}
    assert main(["summary", "--model", "mlp", "--latency", "one"]) == 2
    assert "comma-separated batch sizes" in capsys.readouterr().err


def test_threads_flag_sets_torch_threads_for_the_command_and_restores_them(monkeypatch):
    import argparse

    import pytest
    import torch

    from prunekit import cli

    seen = []
    before = torch.get_num_threads()
    parser = cli.build_parser()
    args = parser.parse_args(["--threads", "1", "summary", "--model", "x"])
    assert args.torch_threads == 1
    assert parser.parse_args(["summary", "--model", "x"]).torch_threads is None  # auto
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--threads", "0", "summary", "--model", "x"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: args)
    args.func = lambda a: seen.append(torch.get_num_threads()) or 0
    assert cli.main([]) == 0
    assert seen == [1] and torch.get_num_threads() == before
    assert cli.thread_count(3) == 3
    monkeypatch.setenv("PRUNEKIT_THREADS", "2")
    assert cli.thread_count(None) == 2
    monkeypatch.setenv("PRUNEKIT_THREADS", "zero")
    with pytest.raises(ValueError, match="PRUNEKIT_THREADS"):
        cli.thread_count(None)
