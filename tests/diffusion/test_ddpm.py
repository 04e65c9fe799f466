from __future__ import annotations

import copy

import pytest
import torch

from prunekit.diffusion import (TrainConfig, UNetConfig, build_unet, count_params, ddim_sample, denoising_loss,
                                fashion_mnist, load_unet, save_unet, schedule_of, train_ddpm_)

from .conftest import TINY, needs_fmnist


def test_unet_config_refuses_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="multiple of norm_num_groups"):
        UNetConfig(block_out_channels=(12, 16), norm_num_groups=8)


def test_build_unet_is_class_conditional_and_seeded():
    a, b = build_unet(TINY, seed=1), build_unet(TINY, seed=1)
    assert a.config.num_class_embeds == 10
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x = torch.zeros(2, 1, 32, 32)
    out = a(x, torch.tensor([3, 3]), class_labels=torch.tensor([0, 1])).sample
    assert out.shape == (2, 1, 32, 32)
    # the class embedding reaches the output: two labels give two different predictions
    assert (out[0] - out[1]).abs().max() > 0


@needs_fmnist
def test_fashion_mnist_padded_to_32_in_minus_one_one():
    x, y = fashion_mnist("test", limit=64)
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0
    assert (x[:, :, :2, :] == -1).all()  # the padding is background
    with pytest.raises(ValueError, match="pad_to"):
        fashion_mnist("test", pad_to=27, limit=4)


def test_training_lowers_the_loss_and_records_the_schedule(tiny_ddpm):
    unet, report = tiny_ddpm
    assert report.steps == 30 and report.losses[-1] < report.losses[0]
    assert schedule_of(unet).num_train_timesteps == 1000


def test_train_refuses_wrong_image_shape_before_changing_anything(fmnist_small):
    unet = build_unet(TINY, seed=0)
    before = copy.deepcopy(unet.state_dict())
    x, y = fmnist_small
    with pytest.raises(ValueError, match=r"images must be \[N, 1, 32, 32\]"):
        train_ddpm_(unet, x[:, :, :28, :28], y, TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="labels must be in"):
        train_ddpm_(unet, x[:4], torch.tensor([0, 1, 2, 10]), TrainConfig(steps=1), progress=False)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


def test_denoising_loss_per_image_matches_mean(tiny_ddpm, fmnist_small):
    unet, _ = tiny_ddpm
    x, y = fmnist_small
    t = torch.tensor([10, 500, 900, 999])
    noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per = denoising_loss(unet, x[:4], y[:4], t, noise, reduction="none")
        mean = denoising_loss(unet, x[:4], y[:4], t, noise)
    assert per.shape == (4,)
    # float32 mean of 4 numbers: a few ulps
    assert torch.allclose(per.mean(), mean, rtol=1e-6)


def test_ddim_sample_shape_range_and_batch_independence(tiny_ddpm):
    unet, _ = tiny_ddpm
    a = ddim_sample(unet, list(range(10)), steps=4, seed=3)
    b = ddim_sample(unet, list(range(10)), steps=4, seed=3, batch_size=3)
    assert a.shape == (10, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    # same noise per image; batched convolutions may sum in another order: float32, 4 steps of a small net
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, ddim_sample(unet, list(range(10)), steps=4, seed=4), atol=1e-2)


def test_ddim_refuses_more_steps_than_trained(tiny_ddpm):
    unet, _ = tiny_ddpm
    with pytest.raises(ValueError, match="more than the 1000 timesteps"):
        ddim_sample(unet, [0], steps=1001)


def test_save_load_round_trip_is_exact(tiny_ddpm, tmp_path):
    unet, _ = tiny_ddpm
    save_unet(unet, tmp_path / "u")
    back = load_unet(tmp_path / "u")
    assert count_params(back) == count_params(unet)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in unet.state_dict().items())
    assert schedule_of(back) == schedule_of(unet)
    # refuses to overwrite without overwrite=True, and a folder that is not a checkpoint
    with pytest.raises(Exception, match="overwrite"):
        save_unet(unet, tmp_path / "u")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not a prunekit diffusion UNet folder"):
        load_unet(tmp_path / "other")


def test_load_refuses_damaged_weights(tiny_ddpm, tmp_path):
    unet, _ = tiny_ddpm
    save_unet(unet, tmp_path / "u")
    with open(tmp_path / "u" / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="sha256"):
        load_unet(tmp_path / "u")


def test_ema_is_warmed_up_so_a_short_run_forgets_the_initial_weights(fmnist_small):
    from prunekit.diffusion.ddpm import ema_decay_at

    assert ema_decay_at(0.995, 0) == pytest.approx(0.1) and ema_decay_at(0.995, 10_000) == 0.995
    x, y = fmnist_small
    init = build_unet(TINY, seed=0)
    runs = {}
    for ema in (None, 0.99):
        u = build_unet(TINY, seed=0)
        train_ddpm_(u, x, y, TrainConfig(steps=12, batch_size=4, lr=2e-3, warmup_steps=0, ema_decay=ema), progress=False)
        runs[ema] = torch.cat([(p - q).flatten() for p, q in zip(u.parameters(), init.parameters())]).norm()
    # a fixed decay of 0.99 would leave 0.99**12 = 89% of the initial weights, moving the EMA only ~11% of the way;
    # warmed up, the average sits near the recent weights
    assert runs[0.99] > 0.5 * runs[None]


def _small_unet(seed=0, channels=(8, 16)):
    return build_unet(UNetConfig(sample_size=8, block_out_channels=channels, norm_num_groups=4, attention_head_dim=4),
                      seed=seed).eval()


def test_step_counts_the_model_was_not_trained_for_are_one_line_each():
    from prunekit.diffusion.ecodiff import ddim_from, ddim_timesteps
    from prunekit.diffusion.memorization import unit_activations

    unet = _small_unet()
    x, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4)
    train_ddpm_(unet, x, y, TrainConfig(steps=1, batch_size=4, num_train_timesteps=50), progress=False)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    samplers = {"ddim_sample": lambda s: ddim_sample(unet, [0], steps=s),
                "ddim_timesteps": lambda s: ddim_timesteps(unet, s),
                "ddim_from": lambda s: ddim_from(unet, torch.randn(1, 1, 8, 8), torch.tensor([0]), steps=s),
                "unit_activations": lambda s: unit_activations(unet, torch.tensor([0]), steps=s)}
    for name, sample in samplers.items():
        with pytest.raises(ValueError, match="more than the 50 timesteps this model was trained with") as e:
            sample(51)  # trained with 50 timesteps: 51 DDIM steps do not exist
        assert "\n" not in str(e.value)
        for bad in (0, -3, 2.5):  # 0 used to be a ZeroDivisionError deep in diffusers
            with pytest.raises(ValueError, match="steps must be a positive int"):
                sample(bad)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


def test_load_refuses_a_checkpoint_of_another_shape(tmp_path):
    import json as _json

    from prunekit.diffusion.ddpm import sha256_file

    save_unet(_small_unet(), tmp_path / "a")
    save_unet(_small_unet(channels=(16, 32)), tmp_path / "b")
    # the weights of a wider UNet under the first one's prunekit.json (its sha256 updated, so only the shapes
    # tell): used to load, then fail at the first forward with a matmul error
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    meta = _json.loads((tmp_path / "a" / "prunekit.json").read_text())
    meta["weights_sha256"] = sha256_file(tmp_path / "a" / "model.safetensors")
    (tmp_path / "a" / "prunekit.json").write_text(_json.dumps(meta))
    files = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with pytest.raises(ValueError, match=r"does not fit its recorded UNet layout: .* the shape \[10, 64\] where the "
                                         r"recorded layout has \[10, 32\] \(a checkpoint of another shape\)") as e:
        load_unet(tmp_path / "a")
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == files
