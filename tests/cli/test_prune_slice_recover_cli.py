import json

import pytest
import torch

from prunekit.cli import prune as prune_cli


def _run(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="prunekit")
    prune_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _args(root, out, *extra):
    return ["prune", "--model", str(root / "model"), "--calib", str(root / "texts"), "--nsamples", "4",
            "--seqlen", "32", "--eval-windows", "2", "--out", str(out), "--quiet", *extra]


def test_slice_saves_a_narrower_stock_model(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sliced"
    assert _run(_args(tiny_folder, out, "--slice", "0.25", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "slicegpt" and data["sliced"]["hidden_after"] == 48
    assert data["after"]["params"] == data["sliced"]["params_after"] < data["before"]["params"]
    assert data["after"]["latency_ms_batch1"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 48
    assert sum(p.numel() for p in model.parameters()) == data["after"]["params"]


def test_recover_after_masks_keeps_them_and_reports(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "rec"
    assert _run(_args(tiny_folder, out, "--method", "magnitude", "--sparsity", "0.5", "--recover", "lora",
                      "--recover-steps", "3", "--recover-seqlen", "16", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    rec = data["recovery"]
    assert rec["mode"] == "lora" and rec["steps"] == 3 and rec["tokens"] == 3 * 4 * 16
    assert 0 < rec["trained_fraction"] < 1
    assert data["pruned"]["nonzeros"] == data["after"]["nonzeros"]  # the masks held through training
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    capsys.readouterr()
    assert _run(_args(tiny_folder, tmp_path / "t", "--method", "magnitude", "--recover", "bias_norm",
                      "--recover-steps", "2")) == 0
    text = capsys.readouterr().out
    assert "pruned" in text and "recovered" in text and "recovery (bias_norm)" in text


@pytest.mark.parametrize("extra, match", [
    (["--slice", "1.0"], r"--slice must be a number in \[0, 1\)"),
    (["--slice", "-0.2"], r"--slice must be a number in \[0, 1\)"),
    (["--slice", "0.25", "--structured", "heads"], "--slice replaces"),
    (["--recover", "lora", "--calib", "none"], "--recover fine-tunes on the calibration text"),
    (["--recover", "full", "--recover-steps", "0"], "steps"),
    (["--recover", "lora", "--recover-lr", "-1"], "lr"),
])
def test_bad_slice_or_recover_is_refused_before_anything_is_written(tiny_folder, tmp_path, extra, match):
    out = tmp_path / "never"
    argv = _args(tiny_folder, out)
    if "--calib" in extra:
        i = argv.index("--calib")
        del argv[i:i + 2]
        argv.remove("--nsamples"), argv.remove("4")  # no calibration: --nsamples would be an error
    with pytest.raises(ValueError, match=match):
        _run(argv + extra)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calib_none_works_for_magnitude_and_is_refused_for_wanda(tiny_folder, tmp_path, capsys):
    argv = _args(tiny_folder, tmp_path / "m", "--method", "magnitude", "--json")
    i = argv.index("--calib")
    argv[i + 1] = "none"
    argv.remove("--nsamples"), argv.remove("4")  # no calibration: --nsamples would be an error
    argv += ["--ppl", str(tiny_folder / "texts")]
    assert _run(argv) == 0
    assert json.loads(capsys.readouterr().out)["after"]["perplexity"] > 1
    argv = [a if a != "magnitude" else "wanda" for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / "w")
    with pytest.raises(ValueError, match="needs calibration"):
        _run(argv)
    assert not (tmp_path / "w").exists()


def test_loraprune_heads_from_the_command_line(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lp"
    assert _run(_args(tiny_folder, out, "--loraprune", "0.5", "--loraprune-what", "both", "--loraprune-steps", "4",
                      "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    lp = data["loraprune"]
    assert lp["heads"] == [4, 2] and lp["kv_heads"] == [2, 1] and lp["widths"] == {"intermediate_size": [128, 64]}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 64
    assert sum(p.numel() for p in model.parameters()) == data["after"]["params"] == lp["params_after"]
