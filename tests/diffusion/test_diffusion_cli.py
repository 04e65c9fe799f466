"""``prunekit diffusion``: bad input is one line and exit code 2, before any work and with nothing written."""

from __future__ import annotations

import json

import pytest

from prunekit.cli import main
from prunekit.diffusion import save_unet


@pytest.fixture(scope="module")
def saved(tiny_ddpm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "m"
    save_unet(tiny_ddpm[0], folder)
    return folder


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_sample_refuses_more_steps_than_trained(saved, tmp_path, capsys):
    rc = main(["diffusion", "sample", "--model", str(saved), "--out", str(tmp_path / "g.png"), "--steps", "1001"])
    assert rc == 2 and "more than the 1000 timesteps" in _err(capsys)
    assert not (tmp_path / "g.png").exists()


def test_prune_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    rc = main(["diffusion", "prune", "--model", str(tmp_path / "x"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a prunekit diffusion UNet folder" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_train_refuses_channels_the_groups_cannot_divide(tmp_path, capsys):
    rc = main(["diffusion", "train", "--out", str(tmp_path / "m"), "--channels", "12,16", "--norm-groups", "8"])
    assert rc == 2 and "multiple of norm_num_groups" in _err(capsys)
    assert not (tmp_path / "m").exists()


def test_prune_an_unreachable_target_writes_nothing(saved, tmp_path, capsys):
    rc = main(["diffusion", "prune", "--model", str(saved), "--out", str(tmp_path / "o"), "--blocks", "mid",
               "--macs", "0.6", "--importance", "l1", "--limit", "64", "--quiet"])
    assert rc == 2 and "could remove only" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_prune_then_sample_json(saved, tmp_path, capsys):
    rc = main(["diffusion", "prune", "--model", str(saved), "--out", str(tmp_path / "o"), "--macs", "0.3",
               "--importance", "l1", "--limit", "64", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    # the tiny UNet's channel groups are coarse: the bisection meets the target by overshooting it
    assert 0.3 <= data["prune"]["macs_removed"] <= 0.7
    rc = main(["diffusion", "sample", "--model", str(tmp_path / "o"), "--out", str(tmp_path / "g.png"),
               "--per-class", "1", "--steps", "2", "--json"])
    assert rc == 0 and (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_refuses_a_model_of_another_image_shape(tmp_path, capsys):
    from prunekit.diffusion import UNetConfig, build_unet

    save_unet(build_unet(UNetConfig(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4,
                                    attention_head_dim=4), seed=0), tmp_path / "m16")
    rc = main(["diffusion", "eval", "--model", str(tmp_path / "m16"), "--n", "20", "--steps", "1", "--quiet"])
    assert rc == 2 and "this UNet makes 1-channel 16-pixel images" in _err(capsys)
