"""``prunekit merge``: the CLI builds the same config the library takes, prints JSON, refuses bad input."""

import json

import pytest
import torch

from prunekit.cli import main
from prunekit.models.hf import tiny_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcli")
    tiny_model("llama", seed=0).save_pretrained(root / "base")
    for i, name in enumerate(("a", "b")):
        ft = tiny_model("llama", seed=0)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        ft.save_pretrained(root / name)
    return root


def test_merge_cli_json(folders, tmp_path, capsys):
    out = tmp_path / "m"
    rc = main(["merge", "--base", str(folders / "base"), "--models", str(folders / "a"), str(folders / "b"),
               "--method", "dare_ties", "--density", "0.1", "--seed", "0", "--out", str(out), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "dare_ties" and data["config"]["density"] == 0.1 and data["config"]["weights"] == [1.0, 1.0]
    assert [round(d["kept"], 1) for d in data["deltas"]] == [0.1, 0.1]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--density", "0"], "density must be a number in (0, 1]"),
    (["--density", "1.2"], "density must be a number in (0, 1]"),
    ([], "--density is required"),
    (["--density", "0.5", "--epsilon", "0.1"], "unknown option 'epsilon'"),
    (["--method", "dare_tie", "--density", "0.5"], "did you mean 'dare_ties'"),
    (["--method", "linear", "--scale", "nan"], "scale must be a finite number within float32's range"),
    (["--method", "linear", "--scale", "inf"], "scale must be a finite number within float32's range"),
    (["--method", "linear", "--scale", "1e39"], "scale must be a finite number within float32's range"),
    (["--method", "linear", "--weights", "1e39", "1e39"], "weights must be finite numbers within float32's range"),
])
def test_merge_cli_errors(folders, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    rc = main(["merge", "--base", str(folders / "base"), "--models", str(folders / "a"), "--out", str(out), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
