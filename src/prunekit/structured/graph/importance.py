"""How important each removable unit of a group is: ``l1``, ``l2``, ``bn_scale``, ``taylor``, ``activation``,
``beta_rank``, ``lrp``, ``random``.

Each importance is registered in :data:`IMPORTANCES` with its typed config (``{"importance": "l2"}``,
``{"importance": "taylor", "batches": 4}``), so recipes and the CLI name them as data. Scores sum
over every tensor slice the unit owns across the group (its Conv/Linear rows and columns, its norm's
scale, its layer-scale entry), as group-level magnitude in DepGraph (Fang et al., 2023) does.
``bn_scale`` is Network Slimming's |γ| (Liu et al., 2017); ``taylor`` is the first-order Taylor
estimate of Molchanov et al., 2019: (Σ g·w over the unit)², with g the loss gradient averaged over
``data`` batches of ``(inputs, targets)`` and ``loss_fn(outputs, targets)``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from ...infra.calling import call_model
from ...core.config import Config
from ...criteria.lrp import relevance
from ...core.deprecation import PrunekitDeprecationWarning
from ...core.registry import Registry
from .depgraph import Member
from .groups import Group


class L1Config(Config):
    """Group L1 norm of the unit's weights."""

    importance: Literal["l1"] = "l1"


class L2Config(Config):
    """Group squared L2 norm of the unit's weights (DepGraph's default)."""

    importance: Literal["l2"] = "l2"


class BNScaleConfig(Config):
    """|γ| of the unit's BatchNorm scales (Network Slimming); groups without BatchNorm fall back to L2."""

    importance: Literal["bn_scale"] = "bn_scale"


class TaylorConfig(Config):
    """First-order Taylor importance (Molchanov et al., 2019) on ``data`` with ``loss_fn(outputs, targets)``."""

    importance: Literal["taylor"] = "taylor"
    batches: int | None = Field(default=None, ge=1, description="use at most this many batches of data")


class ActivationConfig(Config):
    """What each channel writes: Σ over the layers that read it of E[x²] · ‖weight column‖² on calibration
    ``data`` (the example inputs when none is given) — FLAP / Minitron's activation importance, which
    is also what ``what="heads"|"neurons"`` use."""

    importance: Literal["activation"] = "activation"
    batches: int | None = Field(default=None, ge=1, description="use at most this many batches of data")


class RandomConfig(Config):
    """Uniform random scores (seeded by the call's ``seed``): the baseline every criterion must beat."""

    importance: Literal["random"] = "random"


class BetaRankConfig(Config):
    """Beta-Rank (Farhad et al., 2023): each filter's mean |weight| times Σ over output positions of
    std(output) / std(its input window) on calibration ``data``, min-max normalised within its layer."""

    importance: Literal["beta_rank"] = "beta_rank"
    batches: int | None = Field(default=None, ge=1, description="use at most this many batches of data")


class LrpConfig(Config):
    """Pruning by Explaining (Yeom et al., 2021): each channel's LRP relevance for the true class, summed over
    ``data`` batches of (inputs, labels) and L2-normalised per layer, as the authors' filter pruning does."""

    importance: Literal["lrp"] = "lrp"
    rule: Literal["epsilon", "zplus", "composite"] = "composite"
    batches: int | None = Field(default=None, ge=1, description="use at most this many batches of data")


ImportanceConfig = (L1Config | L2Config | BNScaleConfig | TaylorConfig | ActivationConfig | RandomConfig
                    | BetaRankConfig | LrpConfig)


@dataclass
class ScoreContext:
    """What an importance may need besides the groups: the model, data and a seed."""

    model: nn.Module
    loss_fn: Callable | None = None
    data: Iterable | None = None
    seed: int = 0
    example_inputs: Any = None
    # gradients·weights of the Taylor score, computed once per call: the planner re-scores the groups after every
    # tie, and the weights do not change before removal (trial copies share them)
    cache: dict = field(default_factory=dict)


def member_tensor(m: Member) -> Tensor:
    attr = m.tensor[len(m.name) + 1:] if m.name else m.tensor
    return getattr(m.module, attr)


def per_unit(group: Group, rows_of: Callable[[Member], Tensor | None]) -> Tensor:
    """Sum, for each unit, the per-position values ``rows_of(member)`` over the member positions it owns."""
    scores = torch.zeros(len(group), dtype=torch.float64)
    for m in group.members:
        rows = rows_of(m)
        if rows is None:
            continue
        pos, idx = group.unit_index(m.key)
        scores.index_add_(0, torch.as_tensor(idx), rows[torch.as_tensor(pos)])
    return scores


def _rows(m: Member, fn: Callable[[Tensor], Tensor], tensors: dict[int, Tensor] | None = None) -> Tensor | None:
    t = member_tensor(m)
    if not isinstance(t, nn.Parameter):
        return None  # running statistics and other buffers are not weights
    t = tensors.get(id(t)) if tensors is not None else t.detach()
    if t is None:
        return None
    t = t.movedim(m.dim, 0)
    return fn(t.reshape(t.shape[0], -1).double()).sum(1)


def score_l1(groups: list[Group], config: L1Config, ctx: ScoreContext) -> list[Tensor]:
    return [per_unit(g, lambda m: _rows(m, torch.abs)) for g in groups]


def score_l2(groups: list[Group], config: L2Config, ctx: ScoreContext) -> list[Tensor]:
    return [per_unit(g, lambda m: _rows(m, torch.square)) for g in groups]


def _is_bn_scale(m: Member) -> bool:
    return isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.tensor.endswith(".weight") and m.role == "norm"


def score_bn_scale(groups: list[Group], config: BNScaleConfig, ctx: ScoreContext) -> list[Tensor]:
    out = []
    for g in groups:
        if any(_is_bn_scale(m) for m in g.members):
            out.append(per_unit(g, lambda m: _rows(m, torch.abs) if _is_bn_scale(m) else None))
        else:
            out.append(per_unit(g, lambda m: _rows(m, torch.square)))
    return out


def score_random(groups: list[Group], config: RandomConfig, ctx: ScoreContext) -> list[Tensor]:
    gen = torch.Generator().manual_seed(ctx.seed)
    return [torch.rand(len(g), generator=gen, dtype=torch.float64) for g in groups]


def _legacy(loss_fn: Callable) -> bool:
    try:
        params = [p for p in inspect.signature(loss_fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return False
    return len(params) == 1


def score_taylor(groups: list[Group], config: TaylorConfig, ctx: ScoreContext) -> list[Tensor]:
    if "taylor" not in ctx.cache:
        ctx.cache["taylor"] = _taylor_products(config, ctx)
    gw = ctx.cache["taylor"]
    return [per_unit(g, lambda m: _rows(m, lambda t: t, gw)).square() for g in groups]


def _taylor_products(config: TaylorConfig, ctx: ScoreContext) -> dict[int, Tensor]:
    """g·w for every trainable parameter, g the loss gradient averaged over the batches."""
    model, loss_fn = ctx.model, ctx.loss_fn
    if loss_fn is None:
        raise ValueError("importance='taylor' needs loss_fn=, a function (outputs, targets) -> scalar loss, and "
                         "data=, batches of (inputs, targets)")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    if ctx.data is None:
        if not _legacy(loss_fn):
            raise ValueError("importance='taylor' needs data=, batches of (inputs, targets) for loss_fn(outputs, targets)")
        warnings.warn("structured.prune: loss_fn(model) is deprecated; pass loss_fn(outputs, targets) and "
                      "data=[(inputs, targets), ...] (the old form goes in the next release)",
                      PrunekitDeprecationWarning, stacklevel=4)
        batches: list = [None]
    else:
        batches = list(ctx.data)[: config.batches] if config.batches else list(ctx.data)
        if not batches:
            raise ValueError("importance='taylor' got data= with no batches")
    for batch in batches:
        if batch is None:
            loss = loss_fn(model)
        else:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(f"data= must yield (inputs, targets) pairs, got {type(batch).__name__}")
            loss = loss_fn(call_model(model, batch[0]), batch[1])
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
        if not math.isfinite(float(loss.detach())):
            raise ValueError(f"loss_fn returned {float(loss)}: the Taylor importance needs a finite loss")
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc += g.detach()
    return {id(p): (g / len(batches)) * p.detach() for p, g in zip(params, grads)}


def _input_energy(ctx: ScoreContext, modules: dict[int, nn.Module], batches: int | None) -> dict[int, Tensor]:
    """E[x²] of each input channel of ``modules`` (Linear: last dim; conv: dim 1) over the calibration data."""
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        x = args[0].detach().double() if args and isinstance(args[0], Tensor) else None
        if x is None:
            return
        dim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else x.dim() - 1
        x = x.movedim(dim, -1).reshape(-1, x.shape[dim])
        sums[id(mod)] = sums.get(id(mod), 0) + x.square().sum(0)
        counts[id(mod)] = counts.get(id(mod), 0) + x.shape[0]

    data = list(ctx.data) if ctx.data is not None else [ctx.example_inputs]
    data = data[:batches] if batches else data
    handles = [m.register_forward_pre_hook(hook) for m in modules.values()]
    was = ctx.model.training
    ctx.model.eval()
    try:
        with torch.no_grad():
            for batch in data:
                inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 and ctx.data is not None \
                    and not isinstance(batch[0], (int, float)) else batch
                call_model(ctx.model, inputs)
    finally:
        ctx.model.train(was)
        for h in handles:
            h.remove()
    return {k: s / max(counts[k], 1) for k, s in sums.items()}


def score_activation(groups: list[Group], config: ActivationConfig, ctx: ScoreContext) -> list[Tensor]:
    readers = {id(m.module): m.module for g in groups for m in g.members
               if m.role == "in" and isinstance(m.module, (nn.Linear, nn.modules.conv._ConvNd))}
    energy = _input_energy(ctx, readers, config.batches)

    def rows(m: Member) -> Tensor | None:
        if m.role != "in" or id(m.module) not in energy:
            return None
        w = member_tensor(m).detach().double().movedim(m.dim, 0)
        e = energy[id(m.module)]
        col = w.reshape(w.shape[0], -1).square().sum(1)
        return col * e if len(e) == len(col) else None

    return [per_unit(g, rows) for g in groups]


def beta_rank(weight: Tensor, inputs: Tensor, outputs: Tensor, module: nn.Module) -> Tensor:
    """Beta-Rank of each output unit of ``module`` (Linear or Conv) from a batch of its ``inputs`` and
    ``outputs``: mean |filter| · Σ_p σ_out(c, p) / σ_in(p), with σ over the batch for the output at position p
    and over the batch and the whole input window of p for the input (positions where σ_in is 0 are
    skipped), min-max normalised to [0, 1] within the layer (all zeros when every filter ties)."""
    x, y = inputs.double(), outputs.double()
    if isinstance(module, nn.modules.conv._ConvNd):
        if x.dim() != 4:
            raise ValueError("beta_rank supports Conv2d and Linear layers")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (N, C·k·k, L)
        sigma_in = cols.transpose(0, 1).reshape(-1, cols.shape[-1]).std(0, unbiased=False)  # (L,)
        sigma_out = y.flatten(2).std(0, unbiased=False)  # (C_out, L)
    else:
        sigma_in = x.reshape(-1).std(unbiased=False).reshape(1)
        sigma_out = y.reshape(-1, y.shape[-1]).std(0, unbiased=False).reshape(-1, 1)
    ok = sigma_in > 0
    ratio = (sigma_out[:, ok] / sigma_in[ok]).sum(1)
    score = weight.detach().double().abs().reshape(weight.shape[0], -1).mean(1) * ratio
    span = score.max() - score.min()
    return (score - score.min()) / span if span > 0 else torch.zeros_like(score)


def score_beta_rank(groups: list[Group], config: BetaRankConfig, ctx: ScoreContext) -> list[Tensor]:
    writers = {id(m.module): m.module for g in groups for m in g.members
               if m.role == "out" and isinstance(m.module, (nn.Linear, nn.Conv2d)) and m.tensor.endswith("weight")}
    if ctx.data is None and ctx.example_inputs is None:
        raise ValueError("importance='beta_rank' needs data= (batches of inputs) or the example inputs")
    seen: dict[int, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in writers}

    def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            seen[id(mod)][0].append(args[0].detach())
            seen[id(mod)][1].append(out.detach())

    data = list(ctx.data) if ctx.data is not None else [ctx.example_inputs]
    data = data[: config.batches] if config.batches else data
    handles = [m.register_forward_hook(hook) for m in writers.values()]
    was = ctx.model.training
    ctx.model.eval()
    try:
        with torch.no_grad():
            for batch in data:
                inputs = batch[0] if ctx.data is not None and isinstance(batch, (tuple, list)) and len(batch) == 2 \
                    else batch
                call_model(ctx.model, inputs)
    finally:
        ctx.model.train(was)
        for h in handles:
            h.remove()
    ranks = {k: beta_rank(writers[k].weight, torch.cat(xs), torch.cat(ys), writers[k]) for k, (xs, ys) in seen.items()
             if xs}

    def rows(m: Member) -> Tensor | None:
        if m.role != "out" or id(m.module) not in ranks or not m.tensor.endswith("weight"):
            return None
        return ranks[id(m.module)]

    return [per_unit(g, rows) for g in groups]


def score_lrp(groups: list[Group], config: LrpConfig, ctx: ScoreContext) -> list[Tensor]:
    if ctx.data is None:
        raise ValueError("importance='lrp' needs data=, batches of (inputs, class labels)")
    writers = {m.name: m.module for g in groups for m in g.members
               if m.role == "out" and isinstance(m.module, (nn.Linear, nn.modules.conv._ConvNd))
               and m.tensor.endswith("weight")}
    batches = list(ctx.data)[: config.batches] if config.batches else list(ctx.data)
    units: dict[str, Tensor] = {}
    relevance(ctx.model, writers, batches, config.rule, units=units)
    norm = {n: u / u.norm().clamp_min(1e-300) for n, u in units.items()}

    def rows(m: Member) -> Tensor | None:
        if m.role != "out" or m.name not in norm or not m.tensor.endswith("weight"):
            return None
        return norm[m.name]

    return [per_unit(g, rows) for g in groups]


IMPORTANCES: Registry = Registry("structured importance", key="importance")
IMPORTANCES.add("l1", score_l1, config=L1Config)
IMPORTANCES.add("l2", score_l2, config=L2Config)
IMPORTANCES.add("bn_scale", score_bn_scale, config=BNScaleConfig)
IMPORTANCES.add("taylor", score_taylor, config=TaylorConfig)
IMPORTANCES.add("activation", score_activation, config=ActivationConfig)
IMPORTANCES.add("random", score_random, config=RandomConfig)
IMPORTANCES.add("beta_rank", score_beta_rank, config=BetaRankConfig)
IMPORTANCES.add("lrp", score_lrp, config=LrpConfig)


def importance_config(importance: Any) -> Config:
    """The config for ``importance``: a name (``"l2"``), a dict (``{"importance": "taylor", "batches": 2}``)
    or a config object."""
    if isinstance(importance, str):
        IMPORTANCES.get(importance)  # unknown names: "did you mean"
        return IMPORTANCES.config(importance)()
    if isinstance(importance, Config) or isinstance(importance, dict):
        return IMPORTANCES.parse_config(importance)
    raise TypeError(f"importance must be a name ({', '.join(IMPORTANCES.names())}), a dict or a config, "
                    f"got {type(importance).__name__}")


def score_groups(groups: list[Group], importance: Any, ctx: ScoreContext) -> list[Tensor]:
    """One score tensor per group (higher = more important), checked to be finite."""
    config = importance_config(importance)
    name = getattr(config, "importance")
    scores = IMPORTANCES.get(name)(groups, config, ctx)
    for g, s in zip(groups, scores):
        if not torch.isfinite(s).all():
            raise ValueError(f"importance {name!r} gave non-finite scores for the group of {', '.join(g.names[:3])}; "
                             "check the model's weights (and data / loss for taylor) for NaN or inf")
    return scores
