from __future__ import annotations

import copy

import pytest
import torch

from prunekit.diffusion import ddim_sample, load_unet, save_unet
from prunekit.diffusion.diffpruning import DiffPruningConfig, diff_prune_, informative_timesteps
from prunekit.diffusion.metrics import macs_per_step


def test_informative_timesteps_stop_below_the_threshold(tiny_ddpm, fmnist_small):
    unet, _ = tiny_ddpm
    x, y = fmnist_small
    noise = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    every, losses = informative_timesteps(unet, x[:8], y[:8], noise, threshold=None, stride=100)
    assert every == list(range(0, 1000, 100))
    cut, _ = informative_timesteps(unet, x[:8], y[:8], noise, threshold=0.999, stride=100)
    # with a threshold the visit stops at the first loss below 0.999 × the largest so far
    k = next((i for i in range(1, len(losses)) if losses[i] < 0.999 * max(losses[:i])), len(losses))
    assert cut == every[:k]


@pytest.mark.parametrize("importance", [pytest.param("diff-pruning", marks=pytest.mark.slow), "l1",
                                        pytest.param("random", marks=pytest.mark.slow)])
def test_prune_to_half_the_macs_runs_and_saves(tiny_ddpm, fmnist_small, importance, tmp_path):
    unet = copy.deepcopy(tiny_ddpm[0])
    x, y = fmnist_small
    before = macs_per_step(unet)
    report = diff_prune_(unet, x, y, DiffPruningConfig(importance=importance, batch_size=8, timestep_stride=200))
    # the MAC target is met by bisection over channel counts: within a few percent
    assert 0.42 <= report.macs_removed <= 0.58, report
    assert report.macs_after == macs_per_step(unet) < before
    assert not report.structured["repaired"]  # nothing had to be kept after the check
    assert (report.timesteps != []) == (importance == "diff-pruning")
    out = ddim_sample(unet, [0, 1], steps=2)
    save_unet(unet, tmp_path / "p")
    back = load_unet(tmp_path / "p")
    assert sum(p.numel() for p in back.parameters()) == report.params_after
    # same weights, same noise: the reloaded model samples the same images (float32, 2 steps: a few ulps)
    assert torch.allclose(ddim_sample(back, [0, 1], steps=2), out, atol=1e-5)


def test_an_unreachable_target_is_an_error_and_changes_nothing(tiny_ddpm, fmnist_small):
    unet = copy.deepcopy(tiny_ddpm[0])
    x, y = fmnist_small
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ValueError, match="could remove only .* nothing was pruned"):
        diff_prune_(unet, x, y, DiffPruningConfig(importance="l1", macs_sparsity=0.6, blocks=("mid",)))
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert unet.mid_block.resnets[0].conv1.out_channels == 16


def test_blocks_limit_the_pruning(tiny_ddpm, fmnist_small):
    unet = copy.deepcopy(tiny_ddpm[0])
    x, y = fmnist_small
    report = diff_prune_(unet, x, y, DiffPruningConfig(importance="l1", macs_sparsity=0.1, blocks=("up",)))
    assert report.macs_removed >= 0.08
    assert unet.down_blocks[0].resnets[0].conv1.out_channels == 8  # outside the up blocks: untouched
    assert any(m.out_channels < 8 for n, m in unet.named_modules()
               if n.startswith("up_blocks.") and isinstance(m, torch.nn.Conv2d) and n.endswith("conv1"))


def test_a_layout_the_graph_cannot_follow_is_one_error_and_changes_nothing(tiny_ddpm, fmnist_small):
    class Spectral(torch.nn.Module):  # an operation across the channels with no rule in the graph
        def forward(self, x):
            return torch.fft.fft(x, dim=1).real

    unet = copy.deepcopy(tiny_ddpm[0])
    unet.mid_block.resnets[0].nonlinearity = Spectral()
    x, y = fmnist_small
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ValueError, match=r"layout cannot be followed by the dependency graph .*'fft_fft' in module "
                                         r"'mid_block.resnets.0.nonlinearity'.*nothing was pruned") as e:
        diff_prune_(unet, x, y, DiffPruningConfig(importance="l1", macs_sparsity=0.3))
    assert "\n" not in str(e.value)
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
