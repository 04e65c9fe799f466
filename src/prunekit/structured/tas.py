"""TAS: network pruning via transformable architecture search (Dong & Yang, NeurIPS 2019).

Instead of fixing the pruned network's shape and inheriting weights, TAS *searches* the number of channels of
every layer and the number of layers of every stage, then trains the searched shape by knowledge distillation
from the unpruned network. The defining steps, each a function here:

1. a learnable distribution over candidate widths of each layer (``width_logits``: softmax over the fractions
   ``choices`` of the layer's full width) and over depths of each stage (``depth_logits``: 1 .. the stage's
   layers);
2. sampling by Gumbel-softmax: ``n_sampled`` candidates drawn without replacement (Gumbel top-k), their
   Gumbel-softmax weights renormalised over the drawn set (:func:`gumbel_pick`), so the loss reaches the logits;
3. channel-wise interpolation (CWI, :func:`channel_interpolate`): a candidate's feature map keeps the first
   ``C_j`` channels of the full-width output and is resized along the channel axis to the full width (adaptive
   average pooling over channels, the paper code's ``ChannelWiseInterV2``), so maps of different widths can be
   summed with those weights; a stage's output is the same weighted sum over the sampled depths;
4. a cost loss toward a MACs target (:func:`cost_loss`): ``log E[MACs]`` while the argmax network is above
   ``(1 + tolerance)·target``, ``−log E[MACs]`` while it is below ``(1 − tolerance)·target``, 0 between, where
   ``E[MACs]`` is exact for the independent width/depth distributions (:meth:`TASSearch.expected_macs`: a
   convolution's MACs are bilinear in its input and output channels, so E[in·out] = E[in]·E[out]);
5. the searched shape is every distribution's argmax (:meth:`TASSearch.searched_widths`), built fresh
   (:class:`ChainCNN`) and trained with logit distillation from the unpruned network (:func:`distill_`).

The search space is :class:`ChainCNN`: stages of 3×3 conv–BN–ReLU layers (every layer of a stage has the same
full width, so depths can be mixed), 2×2 max-pooling between stages, global average pooling and a linear head
(``ChainCNN([[16], [32], [64]])`` is :class:`prunekit.models.SmallCNN`'s shape). One entry point,
:func:`tas`: search → build → distil, configured by :class:`TASConfig` (registered in :data:`SEARCHES`).

Two simplifications from the paper, both stated: the search starts from the unpruned network's trained weights
(the paper trains the supernet from scratch), and one BatchNorm per layer is sliced for every candidate (the
paper keeps one BN per candidate; in training mode the per-channel batch statistics are the same).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..core.config import Config
from ..core.registry import Registry
from ..train.loop import fit
from ..train.recovery import kd_loss


# ---------------------------------------------------------------------------------------------- the search space
class ChainCNN(nn.Module):
    """Stages of 3×3 conv–BN–ReLU layers for small images: ``widths[s][i]`` is the output channels of layer i of
    stage s; 2×2 max-pooling between stages, global average pooling and a linear head after the last."""

    def __init__(self, widths: Sequence[Sequence[int]], classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_widths(widths)
        self.widths = [list(map(int, stage)) for stage in widths]
        self.classes, self.in_channels = classes, in_channels
        stages, cin = [], in_channels
        for stage in self.widths:
            layers = []
            for c in stage:
                layers.append(nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                            nn.ReLU(inplace=True)))
                cin = c
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


def check_widths(widths: Any) -> None:
    """A ChainCNN shape: a non-empty list of non-empty lists of positive whole channel counts."""
    ok = isinstance(widths, (list, tuple)) and len(widths) > 0 and all(
        isinstance(s, (list, tuple)) and len(s) > 0 and all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                                                             for c in s) for s in widths)
    if not ok:
        raise ValueError(f"widths must be a list of stages, each a non-empty list of positive channel counts "
                         f"(e.g. [[16], [32, 32], [64]]); got {widths!r}")


def chain_macs(widths: Sequence[Sequence[float]], image_size: int = 28, in_channels: int = 1, classes: int = 10) -> float:
    """MACs of one image through a ChainCNN of these widths (convolutions and the head, as
    :func:`prunekit.metrics.macs.count_macs` counts them); widths may be expectations (fractional channels)."""
    total, cin, size = 0.0, float(in_channels), image_size
    for s, stage in enumerate(widths):
        for c in stage:
            total += 9 * size * size * cin * c
            cin = c
        if s < len(widths) - 1:
            size //= 2
    return total + cin * classes


# ---------------------------------------------------------------------------------------------- the defining steps
def channel_interpolate(x: Tensor, channels: int) -> Tensor:
    """CWI: ``x`` resized along its channel axis (dim 1) to ``channels`` by adaptive average pooling: output
    channel j is the mean of input channels ⌊j·C/c⌋ .. ⌈(j+1)·C/c⌉−1 (C in, c out). Fewer channels are averaged
    down, more are spread out (each input channel repeated or blended with its neighbour)."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive whole number, got {channels!r}")
    c = x.shape[1]
    if c == channels:
        return x
    moved = x.movedim(1, -1)
    out = F.adaptive_avg_pool1d(moved.reshape(-1, 1, c), channels)
    return out.reshape(*moved.shape[:-1], channels).movedim(-1, 1)


def gumbel_pick(logits: Tensor, tau: float, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw ``n`` candidates from softmax(``logits``) without replacement by Gumbel top-k, and return their
    indices and weights: the Gumbel-softmax at temperature ``tau``, renormalised over the drawn set
    (differentiable in ``logits``)."""
    u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-7)
    h = torch.softmax((torch.log_softmax(logits, -1) - torch.log(-torch.log(u))) / tau, -1)
    idx = torch.topk(h.detach(), min(n, logits.numel())).indices
    w = h[idx]
    return idx, w / w.sum()


def cost_loss(expected: Tensor, argmax_macs: float, target: float, tolerance: float) -> Tensor:
    """TAS's cost loss: ``log E`` when the argmax network's MACs exceed (1 + tolerance)·target, ``−log E`` when
    they fall below (1 − tolerance)·target, else 0 (``E``: the expected MACs, differentiable in the logits)."""
    if argmax_macs > (1 + tolerance) * target:
        return torch.log(expected)
    if argmax_macs < (1 - tolerance) * target:
        return -torch.log(expected)
    return expected.new_zeros(())


class TASSearch(nn.Module):
    """The searchable network: a full-width :class:`ChainCNN` (its weights) plus the width and depth logits.

    ``forward`` samples a network per batch (the training mode's path; :attr:`tau` is the Gumbel temperature);
    :meth:`expected_macs` and :meth:`searched_widths` read the distributions."""

    def __init__(self, net: ChainCNN, choices: Sequence[float], n_sampled: int = 2, image_size: int = 28,
                 search_depth: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.net = net
        self.choices = list(choices)
        self.n_sampled, self.image_size, self.search_depth = n_sampled, image_size, search_depth
        self.tau = 1.0
        self.generator = generator
        # candidate channel counts of every layer: round(f · full width), at least 1, distinct and ascending
        self.candidates = [[sorted({max(1, round(f * c)) for f in self.choices}) for c in stage] for stage in net.widths]
        # logits start near uniform, N(0, 0.01²) as in the paper's code (the argmax starts anywhere)
        def init(n: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(n, generator=generator) * 0.01)

        self.width_logits = nn.ParameterList([init(len(cands)) for stage in self.candidates for cands in stage])
        self.depth_logits = nn.ParameterList([init(len(stage) if search_depth else 1) for stage in net.widths])

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.width_logits) + list(self.depth_logits)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def _layer(self, x: Tensor, layer: nn.Module, index: int, cands: list[int]) -> Tensor:
        y = layer(x)  # conv–BN–ReLU at full width; candidate j keeps its first cands[j] channels
        idx, w = gumbel_pick(self.width_logits[index], self.tau, self.n_sampled, self.generator)
        full = y.shape[1]
        return sum(wk * channel_interpolate(y[:, :cands[k]], full) for k, wk in zip(idx.tolist(), w))

    def forward(self, x: Tensor) -> Tensor:
        index = 0
        for s, stage in enumerate(self.net.stages):
            outs = []
            for i, layer in enumerate(stage):
                x = self._layer(x, layer, index, self.candidates[s][i])
                outs.append(x)
                index += 1
            if self.search_depth and len(outs) > 1:
                idx, w = gumbel_pick(self.depth_logits[s], self.tau, self.n_sampled, self.generator)
                x = sum(wk * outs[k] for k, wk in zip(idx.tolist(), w))
            if s < len(self.net.stages) - 1:
                x = F.max_pool2d(x, 2)
        return self.net.fc(x.mean((2, 3)))

    def probabilities(self) -> tuple[list[list[Tensor]], list[Tensor]]:
        """softmax of every layer's width logits (by stage) and of every stage's depth logits, in float64."""
        flat = [torch.softmax(p.double(), -1) for p in self.width_logits]  # float64: E[MACs] sums large terms
        widths, k = [], 0
        for stage in self.candidates:
            widths.append(flat[k:k + len(stage)])
            k += len(stage)
        return widths, [torch.softmax(p.double(), -1) for p in self.depth_logits]

    def expected_macs(self) -> Tensor:
        """E[MACs] of the sampled network, differentiable in the logits: layer i of a stage runs with probability
        P(depth ≥ i + 1), with E[in]·E[out] channels (independent distributions; MACs are bilinear in them); the
        next stage (and the head) reads the stage's last running layer: Σ_d P(depth = d)·E[C_d]."""
        pw, pd = self.probabilities()
        total = torch.zeros((), dtype=torch.float64)
        cin: Tensor = torch.tensor(float(self.net.in_channels), dtype=torch.float64)
        size = self.image_size
        for s, stage in enumerate(self.candidates):
            q = pd[s] if self.search_depth else None
            e_out = []
            for i, cands in enumerate(stage):
                e = (pw[s][i] * torch.tensor(cands, dtype=torch.float64)).sum()
                runs = q[i:].sum() if q is not None and len(stage) > 1 else torch.ones((), dtype=torch.float64)
                total = total + runs * 9 * size * size * cin * e
                e_out.append(e)
                cin = e
            if q is not None and len(stage) > 1:
                cin = sum(q[d] * e_out[d] for d in range(len(stage)))
            if s < len(self.candidates) - 1:
                size //= 2
        return total + cin * self.net.classes

    def searched_widths(self) -> list[list[int]]:
        """The argmax network: every stage's most probable depth, every kept layer's most probable width."""
        pw, pd = self.probabilities()
        out = []
        for s, stage in enumerate(self.candidates):
            depth = int(pd[s].argmax()) + 1 if self.search_depth else len(stage)
            out.append([stage[i][int(pw[s][i].argmax())] for i in range(depth)])
        return out

    def argmax_macs(self) -> float:
        return chain_macs(self.searched_widths(), self.image_size, self.net.in_channels, self.net.classes)


# ---------------------------------------------------------------------------------------------- config and entry
class TASConfig(Config):
    """TAS's settings. ``target`` is the fraction of the unpruned network's MACs the pruned one may keep."""

    search: Literal["tas"] = "tas"
    target: float = Field(0.5, gt=0, le=1)
    tolerance: float = Field(0.05, ge=0, lt=1)
    choices: list[float] = Field(default_factory=lambda: [k / 8 for k in range(1, 9)])
    n_sampled: int = Field(2, ge=1)
    search_depth: bool = True
    search_epochs: float = Field(2.0, gt=0)
    weight_lr: float = Field(0.02, gt=0)
    arch_lr: float = Field(0.05, gt=0)
    arch_weight_decay: float = Field(1e-3, ge=0)
    cost_weight: float = Field(2.0, ge=0)
    tau_start: float = Field(10.0, gt=0)
    tau_end: float = Field(0.1, gt=0)
    kd_epochs: float = Field(3.0, ge=0)
    kd_lr: float = Field(0.05, gt=0)
    kd_temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(0.9, ge=0, le=1)
    batch_size: int = Field(64, ge=1)
    image_size: int = Field(28, ge=1)
    seed: int = 0


SEARCHES: Registry[Any] = Registry("architecture search", key="search")


@dataclass
class TASReport:
    """What the search found: the argmax widths, their MACs against the target, the last distributions."""

    widths: list[list[int]]
    macs: float
    macs_full: float
    target_macs: float
    expected_macs: float
    width_probs: list[list[list[float]]]
    depth_probs: list[list[float]]
    steps: int
    kd_epochs: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"TAS: widths {self.widths}, MACs {self.macs:,.0f} of {self.macs_full:,.0f} "
                f"({self.macs / self.macs_full:.1%}; target {self.target_macs / self.macs_full:.1%}), "
                f"{self.steps} search steps, {self.kd_epochs:g} distillation epochs")


@dataclass
class TASResult:
    """The pruned network (a fresh :class:`ChainCNN` of the searched shape, distilled) and the report."""

    model: ChainCNN
    report: TASReport


def _config(config: TASConfig | dict | None, fields: dict[str, Any]) -> TASConfig:
    if isinstance(config, TASConfig):
        return SEARCHES.parse_config(config, **fields)  # type: ignore[return-value]
    return SEARCHES.parse_config({"search": "tas", **dict(config or {})}, **fields)  # type: ignore[return-value]


def _check_model(model: Any) -> ChainCNN:
    if not isinstance(model, ChainCNN):
        raise TypeError(f"TAS searches the widths and depths of a ChainCNN (prunekit.structured.tas.ChainCNN), got "
                        f"{type(model).__name__}: build and train the unpruned network as a ChainCNN")
    return model


def _check_data(data: Dataset, batch_size: int, what: str) -> None:
    if len(data) < batch_size:  # type: ignore[arg-type]
        raise ValueError(f"{what} has {len(data)} examples, fewer than one batch of {batch_size}; "  # type: ignore[arg-type]
                         "pass more data or a smaller batch_size")


def search_widths(model: ChainCNN, data: Dataset, config: TASConfig | dict | None = None, **fields: Any) -> TASReport:
    """Search ``model``'s widths and depths on ``data`` (the unpruned, trained network; it is not changed: the
    search runs on a copy). Network weights train on one half of ``data`` (SGD, cross-entropy), the logits on
    the other (Adam, cross-entropy + ``cost_weight``·cost loss), alternating batch by batch, while the Gumbel
    temperature falls linearly from ``tau_start`` to ``tau_end``."""
    cfg = _config(config, fields)
    _check_model(model)
    if any(not 0 < f <= 1 for f in cfg.choices) or not cfg.choices:
        raise ValueError(f"choices must be fractions of a layer's width in (0, 1]; got {cfg.choices}")
    _check_data(data, 2 * cfg.batch_size, "data (split in two halves: weights and architecture)")
    gen = torch.Generator().manual_seed(cfg.seed)
    net = copy.deepcopy(model)
    search = TASSearch(net, cfg.choices, cfg.n_sampled, cfg.image_size, cfg.search_depth, generator=gen)
    full = chain_macs(net.widths, cfg.image_size, net.in_channels, net.classes)
    target = cfg.target * full
    perm = torch.randperm(len(data), generator=gen).tolist()  # type: ignore[arg-type]
    half = len(perm) // 2
    loaders = [DataLoader(torch.utils.data.Subset(data, perm[:half]), batch_size=cfg.batch_size, shuffle=True,
                          drop_last=True, generator=gen),
               DataLoader(torch.utils.data.Subset(data, perm[half:]), batch_size=cfg.batch_size, shuffle=True,
                          drop_last=True, generator=gen)]
    steps = max(1, round(cfg.search_epochs * min(len(loader) for loader in loaders)))
    w_opt = torch.optim.SGD(search.weight_parameters(), lr=cfg.weight_lr, momentum=0.9, weight_decay=5e-4)
    a_opt = torch.optim.Adam(search.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999),
                             weight_decay=cfg.arch_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, steps)
    search.train()
    step, iters = 0, [iter(loader) for loader in loaders]

    def batch(k: int) -> tuple[Tensor, Tensor]:
        try:
            return next(iters[k])
        except StopIteration:
            iters[k] = iter(loaders[k])
            return next(iters[k])

    while step < steps:
        search.tau = cfg.tau_start + (cfg.tau_end - cfg.tau_start) * step / max(1, steps - 1)
        x, y = batch(0)
        loss = F.cross_entropy(search(x), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        sched.step()
        x, y = batch(1)
        loss = F.cross_entropy(search(x), y) + cfg.cost_weight * cost_loss(
            search.expected_macs(), search.argmax_macs(), target, cfg.tolerance).float()
        a_opt.zero_grad(set_to_none=True)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
        step += 1
    pw, pd = search.probabilities()
    widths = search.searched_widths()
    macs = chain_macs(widths, cfg.image_size, net.in_channels, net.classes)
    notes = []
    if abs(macs - target) > cfg.tolerance * target:
        notes.append(f"the searched network's MACs ({macs / full:.1%} of the full network) missed the target "
                     f"{cfg.target:.1%} ± {cfg.tolerance:.0%}: search longer or raise cost_weight")
    return TASReport(widths, macs, full, target, float(search.expected_macs().detach()),
                     [[p.tolist() for p in stage] for stage in pw], [p.tolist() for p in pd], steps, 0.0, notes)


SEARCHES.add("tas", search_widths, config=TASConfig)


def distill_(student: nn.Module, teacher: nn.Module, data: Dataset, *, epochs: float, lr: float = 0.05,
             temperature: float = 4.0, weight: float = 0.9, batch_size: int = 64, seed: int = 0) -> list[float]:
    """Train ``student`` in place on ``data`` with logit distillation from ``teacher`` (held in eval mode):
    ``weight``·T²·KL + (1 − ``weight``)·CE (:func:`prunekit.train.kd_loss`); returns every step's loss."""
    teacher.eval()

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(m(x), t, y, temperature=temperature, weight=weight)

    return fit(student, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, batch_loss=loss, progress=False)


def tas(model: ChainCNN, data: Dataset, config: TASConfig | dict | None = None, **fields: Any) -> TASResult:
    """TAS end to end: search ``model``'s widths and depths (:func:`search_widths`), build a fresh
    :class:`ChainCNN` of the argmax shape, train it by distillation from ``model`` for ``kd_epochs``. ``model``
    is not changed. ``kd_epochs=0`` returns the untrained searched network (the report says so)."""
    cfg = _config(config, fields)
    _check_model(model)
    _check_data(data, cfg.batch_size, "data")
    report = search_widths(model, data, cfg)
    torch.manual_seed(cfg.seed)
    student = ChainCNN(report.widths, model.classes, model.in_channels)
    if cfg.kd_epochs > 0:
        distill_(student, model, data, epochs=cfg.kd_epochs, lr=cfg.kd_lr, temperature=cfg.kd_temperature,
                 weight=cfg.kd_weight, batch_size=cfg.batch_size, seed=cfg.seed)
    else:
        report.notes.append("kd_epochs=0: the searched network is returned untrained")
    report.kd_epochs = cfg.kd_epochs
    return TASResult(student, report)


def uniform_widths(widths: Sequence[Sequence[int]], macs: float, image_size: int = 28, in_channels: int = 1,
                   classes: int = 10) -> list[list[int]]:
    """``widths`` scaled by one factor (each layer rounded, at least 1) so the network's MACs come closest to
    ``macs``: the uniform-width baseline at equal MACs."""
    check_widths([list(s) for s in widths])
    best, best_gap = None, math.inf
    for k in range(1, 1001):
        f = k / 1000
        w = [[max(1, round(f * c)) for c in s] for s in widths]
        gap = abs(chain_macs(w, image_size, in_channels, classes) - macs)
        if gap < best_gap:
            best, best_gap = w, gap
    return best  # type: ignore[return-value]
