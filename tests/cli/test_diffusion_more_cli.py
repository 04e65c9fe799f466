"""``prunekit diffusion ecodiff | aptp | forget`` on a tiny UNet folder: each saves what the library gives, and bad
input is one line with exit code 2 before anything is written."""

from __future__ import annotations

import json

import pytest

from prunekit.cli import main
from prunekit.datasets import fashion_mnist_available
from prunekit.diffusion import UNetConfig, build_unet, count_params, load_unet, save_unet
from prunekit.infra.meta import read_meta

TINY = UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddpm") / "tiny"
    save_unet(build_unet(TINY, seed=0), path)
    return path


def test_ecodiff_saves_a_smaller_unet(tiny, tmp_path, capsys):
    out = tmp_path / "eco"
    code = main(["diffusion", "ecodiff", "--model", str(tiny), "--out", str(out), "--traj-steps", "2",
                 "--iterations", "1", "--batch-size", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["params_removed"] >= 0.2
    assert count_params(load_unet(out)) == data["params_after"] < count_params(load_unet(tiny))


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")
def test_aptp_saves_one_unet_per_used_code_and_the_routing(tiny, tmp_path, capsys):
    out = tmp_path / "aptp"
    code = main(["diffusion", "aptp", "--model", str(tiny), "--out", str(out), "--codes", "2", "--macs", "0.7",
                 "--iterations", "1", "--batch-size", "4", "--limit", "16", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    routing = read_meta(out)
    assert routing["kind"] == "prunekit-aptp-routing" and len(routing["class_codes"]) == 10
    for c in set(routing["class_codes"]):
        assert count_params(load_unet(out / f"code-{c}")) < count_params(load_unet(tiny))
    assert data["average_macs"] == pytest.approx(routing["average_macs"])


def test_forget_refuses_bad_classes_before_writing(tiny, tmp_path, capsys):
    out = tmp_path / "forgot"
    code = main(["diffusion", "forget", "--model", str(tiny), "--out", str(out), "--memorized", "3", "12"])
    err = capsys.readouterr().err
    assert code == 2 and "--memorized" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_forget_saves_and_says_what_it_deleted(tiny, tmp_path, capsys):
    out = tmp_path / "forgot"
    code = main(["diffusion", "forget", "--model", str(tiny), "--out", str(out), "--memorized", "1",
                 "--samples", "2", "--steps", "2", "--min-z", "0", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["removed"] >= 1
    assert count_params(load_unet(out)) == data["params_after"] < data["params_before"]


@pytest.mark.parametrize("verb, flags", [
    ("forget", ["--memorized", "1", "--samples", "1", "--steps"]),
    ("ecodiff", ["--iterations", "1", "--batch-size", "1", "--traj-steps"]),
])
@pytest.mark.parametrize("steps, says", [("1001", "more than the 1000 timesteps"), ("0", "")])
def test_a_step_count_the_model_was_not_trained_for_writes_nothing(tiny, tmp_path, capsys, verb, flags, steps, says):
    out = tmp_path / "o"
    code = main(["diffusion", verb, "--model", str(tiny), "--out", str(out), *flags, steps])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and ("steps" in err[0])
    assert not out.exists()
