"""Adaptive window pruning in a small Swin-style restoration network, after "Adaptive Window Pruning for
Efficient Local Motion Deblurring" (Lin et al., ICLR 2024): images blurred only in a local region are
restored by window-attention blocks that run only on the windows a light predictor marks blurry; the
windows marked sharp skip every block and come out as they went in.

- data: :func:`local_blur_set`: a horizontal motion blur (box kernel of ``length`` pixels) inside one
  random rectangle of each image; the per-window ground truth is whether a window holds blurred pixels;
- model: :class:`WindowRestorer`: a 3×3 convolution embeds pixels as tokens, ``depth`` blocks of window
  self-attention + MLP (Swin's windows; not shifted, so a skipped window is skipped in every block), a
  3×3 convolution adds the residual back to the input; a light convolutional predictor on the input, its
  largest value over the window, gives the window's blur logit (the paper's predictor reads features;
  this one reads pixels so that it trains apart from the restorer);
- pruning: ``model(x, prune=True)`` runs the blocks on the windows whose blur probability is above
  ``threshold`` only (gathered, so the MAC counter sees the smaller products) and adds the residual only
  there; :func:`psnr` and :func:`prunekit.metrics.macs.count_macs` measure what it bought.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..metrics.image import psnr
from .batches import minibatches, steps_of


def motion_blur(x: Tensor, length: int) -> Tensor:
    """Horizontal box blur of (N, C, H, W) images over ``length`` pixels (odd), borders replicated."""
    if length < 1 or length % 2 == 0:
        raise ValueError(f"length must be a positive odd number of pixels, got {length}")
    r = length // 2
    y = nn.functional.pad(x, (r, r, 0, 0), mode="replicate")
    k = torch.full((x.shape[1], 1, 1, length), 1.0 / length, dtype=x.dtype)
    return nn.functional.conv2d(y, k, groups=x.shape[1])


def window_labels(mask: Tensor, window: int, min_share: float = 0.0) -> Tensor:
    """(N, nH·nW) booleans: whether a window holds more than ``min_share`` of blurred pixels."""
    n, _, h, w = mask.shape
    share = mask.float().view(n, h // window, window, w // window, window).mean((2, 4))
    return (share > min_share).flatten(1)


def local_blur_set(images: Tensor, length: int = 7, size: tuple[int, int] = (8, 14), seed: int = 0,
                   changed: float = 0.02) -> tuple[Tensor, Tensor, Tensor]:
    """(blurred, sharp, blur mask) for (N, 1, H, W) images in [0, 1]: each image blurred inside one random
    rectangle with sides in ``size`` pixels; the mask (N, 1, H, W) marks the pixels of the rectangle that
    the blur changed by more than ``changed`` (blur over a flat region changes nothing to restore)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    full = motion_blur(images, length)
    n, _, h, w = images.shape
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    for i in range(n):
        rh, rw = (int(v) for v in torch.randint(size[0], size[1] + 1, (2,), generator=g))
        y0 = int(torch.randint(0, h - rh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - rw + 1, (1,), generator=g))
        mask[i, 0, y0:y0 + rh, x0:x0 + rw] = True
    blurred = torch.where(mask, full, images)
    return blurred, images.clone(), mask & ((blurred - images).abs() > changed)


def to_windows(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) → (B·nH·nW, window², C), windows in row-major order."""
    b, c, h, w = x.shape
    if h % window or w % window:
        raise ValueError(f"image size {h}×{w} is not a multiple of the window {window}")
    x = x.view(b, c, h // window, window, w // window, window).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, window * window, c)


def from_windows(t: Tensor, b: int, h: int, w: int, window: int) -> Tensor:
    """The inverse of :func:`to_windows`."""
    c = t.shape[-1]
    x = t.view(b, h // window, w // window, window, window, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


class WindowBlock(nn.Module):
    """Pre-norm window self-attention and MLP with residuals, on (windows, tokens, dim)."""

    def __init__(self, dim: int, heads: int, mlp: int = 2) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim))
        self.heads = heads

    def forward(self, t: Tensor) -> Tensor:
        n, l, d = t.shape
        q, k, v = self.qkv(self.norm1(t)).view(n, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, l, d)
        t = t + self.proj(a)
        return t + self.mlp(self.norm2(t))


class WindowRestorer(nn.Module):
    """Swin-style restoration network with a per-window blur predictor (see the module docstring)."""

    def __init__(self, dim: int = 16, window: int = 7, depth: int = 2, heads: int = 2, channels: int = 1,
                 threshold: float = 0.5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(WindowBlock(dim, heads) for _ in range(depth))
        self.out = nn.Conv2d(dim, channels, 3, 1, 1)
        self.predictor = nn.Sequential(nn.Conv2d(channels, 16, (3, 7), 1, (1, 3)), nn.GELU(), nn.Conv2d(16, 16, 1),
                                       nn.GELU(), nn.Conv2d(16, 1, 1))
        nn.init.zeros_(self.out.weight)  # starts as the identity: the residual is learnt from there
        nn.init.zeros_(self.out.bias)
        self.window, self.threshold = window, threshold

    def window_logits(self, x: Tensor) -> Tensor:
        """(B, nH·nW) blur logits of every window: the largest, over the window's pixels, of a light
        convolutional predictor on the input (3×7 receptive field: motion blur is horizontal here)."""
        return to_windows(self.predictor(x), self.window).amax(1).view(x.shape[0], -1)

    def forward(self, x: Tensor, prune: bool = False, keep: Tensor | None = None) -> Tensor:
        """Restore ``x``; with ``prune`` only the windows predicted blurry (or those ``keep`` marks,
        (B, nH·nW) booleans) are processed, the others pass through unchanged."""
        b, _, h, w = x.shape
        e = self.embed(x)
        t = to_windows(e, self.window)
        if prune or keep is not None:
            if keep is None:
                keep = self.window_logits(x).sigmoid() > self.threshold
            rows = torch.nonzero(keep.flatten()).flatten()
            sub = t.index_select(0, rows)
            for blk in self.blocks:
                sub = blk(sub)
            t = t.index_copy(0, rows, sub)
            gate = from_windows(keep.flatten().to(x.dtype)[:, None, None].expand(-1, self.window ** 2, 1),
                                b, h, w, self.window)
            return x + gate * self.out(from_windows(t, b, h, w, self.window))
        for blk in self.blocks:
            t = blk(t)
        return x + self.out(from_windows(t, b, h, w, self.window))


def train_restorer_(model: WindowRestorer, blurred: Tensor, sharp: Tensor, mask: Tensor, *, epochs: float = 1.0,
                    lr: float = 2e-3, batch_size: int = 32, seed: int = 0, predictor_weight: float = 1.0,
                    predictor_lr: float = 1e-2) -> list[float]:
    """Train in place with Adam: mean squared restoration error on every window (what PSNR measures; an L1
    loss left the restorer at the identity here, the median answer when most pixels are sharp) + ``predictor_weight`` × BCE of the
    window blur logits against :func:`window_labels` (the predictor shares no weights with the restorer and
    trains at its own ``predictor_lr``). Returns the loss of every step."""
    if not (len(blurred) == len(sharp) == len(mask)) or len(blurred) < batch_size:
        raise ValueError(f"blurred, sharp and mask must have one length of at least batch_size={batch_size}, "
                         f"got {len(blurred)}, {len(sharp)}, {len(mask)}")
    labels = window_labels(mask, model.window).float()
    steps = steps_of(len(blurred), batch_size, epochs)
    own = {id(p) for p in model.predictor.parameters()}
    opt = torch.optim.Adam([{"params": [p for p in model.parameters() if id(p) not in own], "lr": lr},
                            {"params": list(model.predictor.parameters()), "lr": predictor_lr}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses: list[float] = []
    model.train()
    for idx in minibatches(len(blurred), batch_size, epochs, seed):
        x = blurred[idx]
        loss = ((model(x) - sharp[idx]) ** 2).mean()
        logits = model.window_logits(x)
        loss = loss + predictor_weight * nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass
class WindowFigures:
    """PSNR (dB) of the blurred input, the full model and the window-pruned model; the share of windows
    kept; the predictor's window accuracy; MACs per image of the full and pruned passes."""

    psnr_blurred: float
    psnr_full: float
    psnr_pruned: float
    kept: float
    predictor_accuracy: float
    macs_full: float
    macs_pruned: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(model: WindowRestorer, blurred: Tensor, sharp: Tensor, mask: Tensor) -> WindowFigures:
    """PSNR with and without window pruning, and the MACs of each (averaged over the images: the pruned
    pass's cost depends on how many windows each image keeps)."""
    from ..metrics.macs import count_macs

    model.eval()
    labels = window_labels(mask, model.window)
    keep = model.window_logits(blurred).sigmoid() > model.threshold
    full = model(blurred)
    pruned = model(blurred, keep=keep)
    n = len(blurred)
    macs_full = count_macs(model, blurred) / n
    macs_pruned = count_macs(_Pruned(model, keep), blurred) / n + count_macs(_Predict(model), blurred) / n
    return WindowFigures(psnr(blurred, sharp), psnr(full, sharp), psnr(pruned, sharp), float(keep.float().mean()),
                         float((keep == labels).float().mean()), macs_full, macs_pruned)


class _Pruned(nn.Module):
    def __init__(self, model: WindowRestorer, keep: Tensor) -> None:
        super().__init__()
        self.model, self.keep = model, keep

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, keep=self.keep)


class _Predict(nn.Module):
    """The predictor's own cost (it runs on every pixel)."""

    def __init__(self, model: WindowRestorer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.window_logits(x)
