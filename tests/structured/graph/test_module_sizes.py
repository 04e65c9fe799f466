"""Sizes a module keeps for itself: a channel count it checks its input against (diffusers' ``Downsample2D``:
``assert x.shape[1] == self.channels``), and a head size taken from one tensor and applied to another
(diffusers' attention: ``head_dim = key.shape[-1] // heads``, also for the value)."""

import torch
import torch.nn.functional as F
from torch import nn

import prunekit.structured as ps


class CheckedDown(nn.Module):
    """A block that asserts its input width against a stored int, as diffusers' Downsample2D does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.conv(x)


class DownNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.down = CheckedDown(16)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.head(self.down(torch.relu(self.stem(x))))


def test_stored_channel_count_follows_the_pruned_input():
    model = DownNet().eval()
    x = torch.randn(2, 1, 16, 16)
    report = ps.prune_(model, x, 0.5, "l1")
    # before the fix the assert failed in the pruned copy and the stem's channels were kept
    assert not report.repaired, report.repaired
    assert model.stem.out_channels == 8 and model.down.channels == 8
    assert model.down.out_channels == model.down.conv.out_channels == 8
    assert model(x).shape == (2, 2, 8, 8)


class KeyWidthAttention(nn.Module):
    """Self-attention whose head size is read off the key and used for the value too."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        b = x.shape[0]
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        head_dim = k.shape[-1] // self.heads
        q, k, v = (t.view(b, -1, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * head_dim))


def test_head_size_taken_from_the_key_ties_the_value_to_the_key():
    torch.manual_seed(0)
    model = KeyWidthAttention().eval()
    with torch.no_grad():  # six of the eight q/k units (offset j of every head) nearly zero: a global ranking
        small = [h * 8 + j for h in range(4) for j in range(6)]  # cuts more of q/k than of v/out
        for lin in (model.to_q, model.to_k):
            lin.weight[small] *= 0.01
            lin.bias[small] *= 0.01
    x = torch.randn(2, 6, 32)
    report = ps.prune_(model, x, 0.5, "l1", allocation="global")
    # before the fix, q/k and v/out were kept whole after the check (no tie was found)
    assert not report.repaired, report.repaired
    assert report.details["ties"] >= 1
    assert model.to_q.out_features == model.to_k.out_features == model.to_v.out_features < 32
    assert model(x).shape == (2, 6, 32)


def test_taylor_gradients_are_taken_once_although_a_tie_regroups():
    torch.manual_seed(0)
    model = KeyWidthAttention().eval()
    with torch.no_grad():
        small = [h * 8 + j for h in range(4) for j in range(6)]
        for lin in (model.to_q, model.to_k):
            lin.weight[small] *= 0.01
            lin.bias[small] *= 0.01
    x = torch.randn(2, 6, 32)
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        return (out - target).pow(2).mean()

    report = ps.prune_(model, x, 0.5, "taylor", allocation="global", loss_fn=loss_fn, data=[(x, x)])
    assert report.details["ties"] >= 1  # the planner re-scored the groups after the tie
    assert len(calls) == 1  # before the cache, every re-scoring took the gradients again
