"""``prunekit prune --experts``: a tiny Qwen3-MoE folder loses half its experts, reloads, and bad fractions are
refused before anything is written."""

import json

import pytest

from prunekit.cli import main
from prunekit.experts import tiny_moe

@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder

    fast = tiny_tokenizer()
    return write_tiny_folder(tmp_path_factory.mktemp("moe"), tiny_moe("qwen3_moe", vocab_size=fast.vocab_size), fast)


def _argv(root, out, *extra):
    return ["prune", "--model", str(root / "model"), "--calib", str(root / "texts"), "--nsamples", "4", "--seqlen",
            "32", "--eval-windows", "2", "--out", str(out), *extra]


@pytest.mark.parametrize("extra", [["--expert-score", "reap"], ["--merge-experts", "--renormalize"]])
def test_experts_flag_prunes_and_saves(moe_folder, tmp_path, capsys, extra):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fewer"
    assert main(_argv(moe_folder, out, "--experts", "0.5", "--json", *extra)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["experts"]["experts_before"] == 8 and data["experts"]["experts_after"] == 4
    assert data["after"]["params"] < data["before"]["params"] and data["after"]["perplexity"] > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_experts == 4 and model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4
    assert json.loads((out / "prunekit.json").read_text())["method"] == data["method"]


@pytest.mark.parametrize("value,message", [("0.9", "fewer than top_k=2"), ("1", r"--experts must be a number in \[0, 1\)")])
def test_experts_flag_bad_fraction(moe_folder, tmp_path, capsys, value, message):
    import re

    out = tmp_path / "never"
    assert main(_argv(moe_folder, out, "--experts", value, "--quiet")) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("extra,message", [
    (["--experts", "0.5", "--method", "wanda"], "--method applies to weight pruning"),
    (["--experts", "0.5", "--sparsity", "0.5"], "would be ignored with --experts"),
    (["--experts", "0.5", "--merge-experts", "--expert-score", "frequency"], "does not apply with --merge-experts"),
    (["--renormalize"], "go with --experts"),
])
def test_experts_flag_refuses_ignored_options(moe_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(_argv(moe_folder, out, "--quiet", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
