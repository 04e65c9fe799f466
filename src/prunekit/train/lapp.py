"""LAPP: Layer Adaptive Progressive Pruning, from scratch (Zhai et al., "LAPP: Layer Adaptive Progressive Pruning
for Compressing CNNs from Scratch").

While a CNN trains from its initialization, every convolution followed by a BatchNorm gets

- a **learnable threshold** on its channels' importance (the BN scale |γ_{l,c}|), held as the fraction of the
  layer's channels above it, r_l ∈ [min_channels / C_l, 1], learned (kept in range after every step): channel c,
  at rank quantile q_{l,c} = (rank + ½) / C_l
  of the layer's importances (0 = most important), gets the soft mask m_{l,c} = σ((r_l − q_{l,c}) / τ) on the BN's
  output, τ narrowing from ``temperature_start`` to ``temperature`` as training goes (wide: the thresholds get
  gradients; narrow: the hard mask the model ends with). Held in rank space, a threshold moves one channel at a
  time even while the importances are still nearly equal (|γ| starts at 1 everywhere), where a threshold on the
  raw scores drops a whole layer at once — measured: a layer collapsed to 1 of 64 channels;
- a **lightweight bypass**: a 1×1 convolution beside it (same stride), added to its output, so that a layer
  narrowed early keeps some expressive power.

The loss adds a **MACs constraint**, λ · (E[MACs] / MACs₀ − target)² once the target falls below 1, where
E[MACs] counts each convolution (and its bypass) at the expected kept fraction of its input and output channels,
and the target falls linearly from 1 to ``macs_kept`` over the first ``ramp`` of training: the thresholds rise
where the task loss lets them, so each layer finds its own pruning rate, progressively, and the network lands on
the MACs asked (both sides of the target cost: the compression rate is explicit). :meth:`LAPP.finalize_` then makes the masks
hard (channels with s < t go, at least ``min_channels`` stay per layer), folds each bypass into the centre tap of
its convolution (exact), and removes the pruned channels physically with :func:`prunekit.structured.prune_`.

Chains of conv → BN (VGG-style, ``prunekit.models.SmallCNN``) are followed: a convolution's input channels are
the previous masked layer's outputs where the widths match. Residual networks are refused (a residual sum ties
the channels of several layers, which one threshold per layer cannot keep consistent).

    lapp = LAPP(model, example_inputs, LAPPConfig(macs_kept=0.5))
    fit(model, data, epochs=2, batch_loss=lapp.batch_loss(F.cross_entropy), on_step=lapp.on_step(total_steps))
    report = lapp.finalize_()          # a smaller dense CNN
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core.config import Config
from ..infra.calling import call_model


class LAPPConfig(Config):
    """LAPP's settings (defaults: the paper's scheme at this library's scale)."""

    macs_kept: float = Field(0.5, gt=0, lt=1)  # final fraction of the masked convolutions' MACs
    temperature: float = Field(0.01, gt=0)  # τ at the end: the soft mask's width, in rank quantiles
    temperature_start: float = Field(0.2, gt=0)  # τ at the start, falling geometrically to ``temperature``
    lam: float = Field(2.0, ge=0)  # λ: the weight of the MACs constraint (above ~8 SGD at lr 0.05 oscillates)
    ramp: float = Field(0.5, gt=0, le=1)  # share of the training over which the target falls to macs_kept
    bypass: bool = True  # a 1×1 convolution beside each masked one, folded in at the end
    min_channels: int = Field(1, ge=1)


class _Bypassed(nn.Module):
    """A convolution with a 1×1 bypass beside it: conv(x) + bypass(x)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.bypass = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=False)
        nn.init.zeros_(self.bypass.weight)  # starts as the plain convolution

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.bypass(x)

    def folded(self) -> nn.Conv2d:
        """The convolution with the bypass added to its centre tap (exact for odd kernels, padding k//2)."""
        conv = self.conv
        kh, kw = conv.kernel_size
        with torch.no_grad():
            conv.weight[:, :, kh // 2, kw // 2] += self.bypass.weight[:, :, 0, 0]
        return conv


@dataclass
class LAPPReport:
    """What :meth:`LAPP.finalize_` kept: channels per layer before/after, the learned thresholds, MACs."""

    channels_before: dict[str, int]
    channels_after: dict[str, int]
    thresholds: dict[str, float]
    macs_before: int
    macs_after: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        widths = ", ".join(f"{self.channels_before[k]}→{v}" for k, v in self.channels_after.items())
        return (f"LAPP: channels {widths}; MACs {self.macs_before:,} → {self.macs_after:,} "
                f"({self.macs_after / max(1, self.macs_before):.1%})")


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


class LAPP:
    """Thresholds, soft masks, bypasses and the MACs constraint on ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, example_inputs: Any, config: LAPPConfig | None = None) -> None:
        self.model, self.inputs = model, example_inputs
        self.cfg = config or LAPPConfig()
        if any(type(m).__name__ in ("BasicBlock", "Bottleneck") for m in model.modules()):
            raise ValueError("LAPP follows chains of conv → BatchNorm; this model has residual blocks, whose sum ties "
                             "the channels of several layers (use prunekit.structured.prune_ with a MAC target)")
        self.pairs = self._pairs()
        if not self.pairs:
            raise ValueError("LAPP found no convolution followed by a BatchNorm of its width to mask")
        self.macs0 = self._layer_macs()
        self.progress = 0.0
        # r_l, each layer's kept fraction (its threshold in rank space): every channel at the start
        self.thresholds = nn.ParameterList([nn.Parameter(torch.ones(())) for _ in self.pairs])
        model.lapp_thresholds = self.thresholds  # so the training loop's optimizer updates them
        if self.cfg.bypass:
            for conv_name, _ in self.pairs:
                _set(model, conv_name, _Bypassed(model.get_submodule(conv_name)))
        self._hooks = [model.get_submodule(bn).register_forward_hook(self._mask_hook(i))
                       for i, (_, bn) in enumerate(self.pairs)]

    def _pairs(self) -> list[tuple[str, str]]:
        mods = list(self.model.named_modules())
        out = []
        for i, (name, m) in enumerate(mods):
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                nxt = next(((n, b) for n, b in mods[i + 1:] if isinstance(b, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))),
                           None)
                if nxt and isinstance(nxt[1], nn.BatchNorm2d) and nxt[1].num_features == m.out_channels:
                    if m.kernel_size[0] % 2 and m.kernel_size[1] % 2 and m.padding == (m.kernel_size[0] // 2,
                                                                                        m.kernel_size[1] // 2):
                        out.append((name, nxt[0]))
        return out

    def _layer_macs(self) -> list[int]:
        macs: dict[str, int] = {}
        hooks = []
        for conv_name, _ in self.pairs:
            conv = self.model.get_submodule(conv_name)

            def hook(m: nn.Module, args: tuple, out: Tensor, name: str = conv_name) -> None:
                macs[name] = out[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            hooks.append(conv.register_forward_hook(hook))
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                call_model(self.model, self.inputs)
        finally:
            self.model.train(was)
            for h in hooks:
                h.remove()
        return [macs[c] for c, _ in self.pairs]

    def scores(self, i: int) -> Tensor:
        """Layer ``i``'s channel importances |γ| (detached: the constraint moves the thresholds)."""
        return self.model.get_submodule(self.pairs[i][1]).weight.detach().abs()

    def quantiles(self, i: int) -> Tensor:
        """Each channel's rank quantile among layer ``i``'s importances: (rank + ½) / C, 0 = most important."""
        s = self.scores(i)
        rank = torch.empty_like(s)
        rank[torch.argsort(s, descending=True, stable=True)] = torch.arange(len(s), dtype=s.dtype)
        return (rank + 0.5) / len(s)

    def kept_fraction(self, i: int) -> Tensor:
        """r_l: the fraction of layer ``i``'s channels above its threshold."""
        return self.thresholds[i]

    @torch.no_grad()
    def project_(self) -> None:
        """Each r_l back into [min_channels / C_l, 1] (after an optimizer step)."""
        for i, r in enumerate(self.thresholds):
            r.clamp_(self.cfg.min_channels / len(self.scores(i)), 1.0)

    def tau(self) -> float:
        """The soft masks' current width: ``temperature_start`` at the start of training, ``temperature`` at its end
        (a wide mask lets the thresholds' gradients through while every channel is kept; a narrow one is the hard
        mask the model will have)."""
        a, b = self.cfg.temperature_start, self.cfg.temperature
        return a * (b / a) ** min(1.0, self.progress)

    def soft_mask(self, i: int) -> Tensor:
        return torch.sigmoid((self.kept_fraction(i) - self.quantiles(i)) / self.tau())

    def _mask_hook(self, i: int) -> Callable:
        def hook(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
            return out * self.soft_mask(i).view(1, -1, 1, 1)
        return hook

    def _inputs_of(self) -> list[int | None]:
        """For each masked convolution, the index of the masked layer its input channels come from (None: none)."""
        out: list[int | None] = [None]
        for i in range(1, len(self.pairs)):
            conv = self.model.get_submodule(self.pairs[i][0])
            conv = conv.conv if isinstance(conv, _Bypassed) else conv
            prev = self.model.get_submodule(self.pairs[i - 1][1]).num_features
            out.append(i - 1 if conv.in_channels == prev else None)
        return out

    def expected_macs(self) -> Tensor:
        """E[MACs] / MACs₀ of the masked convolutions at the current soft masks."""
        keep = [self.soft_mask(i).mean() for i in range(len(self.pairs))]
        total = sum(self.macs0)
        out = torch.zeros(())
        for i, (src, macs) in enumerate(zip(self._inputs_of(), self.macs0)):
            out = out + macs * keep[i] * (keep[src] if src is not None else 1.0)
        return out / total

    def target(self) -> float:
        return 1 - (1 - self.cfg.macs_kept) * min(1.0, self.progress / self.cfg.ramp)

    def penalty(self) -> Tensor:
        """λ · (E[MACs]/MACs₀ − target)² once the target is below 1 (before: only what lies above it)."""
        gap = self.expected_macs() - self.target()
        return self.cfg.lam * (gap if self.progress > 0 else torch.relu(gap)).square()

    def batch_loss(self, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable:
        """A ``fit(batch_loss=...)``: the task loss plus :meth:`penalty`."""
        return lambda m, x, y: loss_fn(m(x), y) + self.penalty()

    def on_step(self, total_steps: int) -> Callable[[int], None]:
        """A ``fit(on_step=...)`` that advances the target's ramp with the training."""
        def step(s: int) -> None:
            self.project_()
            self.progress = s / max(1, total_steps)
        return step

    @torch.no_grad()
    def finalize_(self) -> LAPPReport:
        """Hard masks, bypasses folded, pruned channels removed; the model is a plain, narrower CNN."""
        from ..metrics.macs import count_macs
        from ..structured import prune_ as structured_prune_

        keep, thresholds = [], {}
        for i, (_, bn) in enumerate(self.pairs):
            s = self.scores(i)
            n = max(self.cfg.min_channels, int(round(float(self.kept_fraction(i)) * len(s))))
            k = torch.zeros(len(s), dtype=torch.bool)
            k[torch.argsort(s, descending=True, stable=True)[:n]] = True
            keep.append(k)
            thresholds[bn] = float(s[k].min())  # the importance at the cut
        for h in self._hooks:
            h.remove()
        del self.model.lapp_thresholds
        for conv_name, _ in self.pairs:
            m = self.model.get_submodule(conv_name)
            if isinstance(m, _Bypassed):
                _set(self.model, conv_name, m.folded())
        before = {bn: int(k.numel()) for (_, bn), k in zip(self.pairs, keep)}
        macs_before = count_macs(self.model, self.inputs)
        pruned = sum(int((~k).sum()) for k in keep)
        for (_, bn), k in zip(self.pairs, keep):  # the dropped channels output 0, as their hard mask did
            norm = self.model.get_submodule(bn)
            norm.weight[~k] = 0
            norm.bias[~k] = 0
        if pruned:
            total = sum(before.values())
            layer_names = {bn for _, bn in self.pairs} | {c for c, _ in self.pairs}
            ignore = [n for n, m in self.model.named_modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in layer_names]
            structured_prune_(self.model, self.inputs, pruned / total, "bn_scale", allocation="global",
                              ignore=ignore)
        after = {bn: int(self.model.get_submodule(bn).num_features) for _, bn in self.pairs}
        wanted = {bn: int(k.sum()) for (_, bn), k in zip(self.pairs, keep)}
        if after != wanted:
            raise RuntimeError(f"LAPP: the removal kept {after} channels, the masks {wanted}")
        return LAPPReport(before, after, thresholds, macs_before, count_macs(self.model, self.inputs))
