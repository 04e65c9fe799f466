"""LoRAPrune (Zhang et al., 2023): structured pruning of a language model's MLP neurons and attention heads *during*
LoRA fine-tuning, ranked by a criterion built from LoRA's weights and gradients instead of the pre-trained weights'
gradients.

Every linear layer gets a LoRA adapter (``W + α·B·A``) and trains as :func:`prunekit.train.recover_lm_` trains
its ``lora`` mode (adapters, biases and norms; AdamW, warm-up then cosine, clipped gradients). After each backward
pass the full weight's gradient is estimated from the adapters' gradients alone — the change of ``B·A`` after one
step of gradient descent, as the paper writes it,

    Ĝ = (∂L/∂B)·A + B·(∂L/∂A) − (∂L/∂B)·(∂L/∂A),

and each weight entry's importance is ``|Ĝ ⊙ (W + α·B·A)|`` (first-order Taylor). A neuron's score sums its
rows of the projections into the MLP and its column of the projection out of it, each layer's part divided by its
L2 norm, and is smoothed over steps by a moving average. Every ``prune_every`` steps the lowest-scoring neurons of
every MLP are masked (the same count in each, so the model reloads) up to a cubic schedule's sparsity; the masks
also silence the adapters. At the end the adapters are merged and the masked neurons removed: the model is
physically smaller.

``what="heads"`` (or ``"both"``) does the same to attention heads: a head's score sums its query (key, value) rows
and its output-projection columns, each layer's part divided by its L2 norm; heads go by whole key/value groups, or
by the same number of query heads in every group when the layout has one group (as ``prune_heads_`` removes them),
and ``head_sparsity`` (default ``sparsity``) moves to the nearest fraction the layout and the config class allow
(:func:`prunekit.train.loraprune_units.plan_heads`; a fraction that removes no head is refused).

``criterion="gradient"`` uses the true ``∂L/∂W`` instead (the vanilla criterion the paper compares against; it
needs the weights' gradients, which LoRAPrune's criterion exists to avoid), ``"magnitude"`` uses ``|W + α·B·A|``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.config import Config
from ..core.fraction import Sparsity, keep_count
from ..core.mask import remove_mask_, set_mask_
from .loraprune_units import HeadLayer, HeadPlan, NeuronLayer, lora_gradient, plan_heads, removal_count, remove_heads_
from .recovery import merge_lora_, trainable_params_
from .recovery_lm import DEFAULT_LR, checked_windows, loss_ends
from .schedule import cubic, sparsity_at


class LoRAPruneConfig(Config):
    """Settings of :func:`loraprune_`: what is removed, by which criterion, on what schedule, with what LoRA."""

    what: Literal["neurons", "heads", "both"] = "neurons"
    sparsity: Sparsity = 0.5
    head_sparsity: Sparsity | None = Field(None, description="fraction of heads removed (default: sparsity), moved to "
                                                             "the nearest one the layout allows")
    criterion: Literal["lora", "gradient", "magnitude"] = "lora"
    steps: int = Field(100, ge=1)
    prune_every: int = Field(10, ge=1, description="steps between two pruning events")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps before the first neuron goes")
    cooldown: float = Field(0.3, ge=0, lt=1, description="fraction of the steps at the final sparsity")
    ema: float = Field(0.9, ge=0, lt=1, description="moving average of the scores: s ← ema·s + (1 − ema)·step's")
    rank: int = Field(8, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    seqlen: int | None = Field(None, ge=2)
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW's decoupled weight decay (torch's default)")
    seed: int = 0


def scheduled_sparsity(step: int, steps: int, final: float, warmup: float, cooldown: float) -> float:
    """The sparsity in force after ``step`` of ``steps`` (1-based): 0 until ``warmup`` of the steps, ``final``
    for the last ``cooldown`` of them, and Zhu & Gupta's cubic ramp between (:func:`prunekit.train.schedule.sparsity_at`,
    as LoRAPrune's code schedules it); a warm-up and cool-down that overlap jump straight to ``final``."""
    start, stop = warmup * steps, steps - cooldown * steps
    if stop <= start:
        return final if step > start else 0.0
    return sparsity_at(step, initial=0.0, final=final, start_step=start, end_step=stop, schedule=cubic)


@dataclass
class LoRAPruneReport:
    """What :func:`loraprune_` removed and trained."""

    criterion: str
    sparsity: float
    widths: dict[str, tuple[int, int]]
    mlps: int
    params_before: int
    params_after: int
    trained_params: int
    steps: int
    tokens: int
    lr: float
    seconds: float
    cpu_seconds: float
    events: list[tuple[int, float]] = field(default_factory=list)
    heads: tuple[int, int] | None = None  # query heads per layer, before → after
    kv_heads: tuple[int, int] | None = None
    attention_layers: int = 0
    notes: list[str] = field(default_factory=list)
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; losses summarised by the means of the first and last tenth of the steps."""
        d = asdict(self)
        return {**d, **loss_ends(d.pop("losses"))}

    def __str__(self) -> str:
        widths = ", ".join([f"{k} {a} → {b}" for k, (a, b) in self.widths.items()] +
                           ([f"heads {self.heads[0]} → {self.heads[1]} (key/value {self.kv_heads[0]} → "
                             f"{self.kv_heads[1]}) in {self.attention_layers} layers"] if self.heads else []))
        ppl = ""
        if self.perplexity_before is not None and self.perplexity_after is not None:
            ppl = f", perplexity {self.perplexity_before:.2f} → {self.perplexity_after:.2f}"
        return (f"LoRAPrune ({self.criterion} criterion): {self.mlps} MLPs, {widths}; parameters "
                f"{self.params_before:,} → {self.params_after:,}; {self.steps} steps × "
                f"{self.tokens // max(self.steps, 1):,} tokens, lr {self.lr:g}, {len(self.events)} pruning events, "
                f"{self.seconds:.0f} s ({self.cpu_seconds:.0f} s CPU){ppl}")


@dataclass
class LoRAPrunePlan:
    """What :func:`loraprune_` will remove: the dense MLPs grouped by the config field of their width and the
    neurons each group keeps (empty for ``what="heads"``), and the head cut (None for ``what="neurons"``)."""

    dense: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)
    keeps: dict = field(default_factory=dict)
    heads: HeadPlan | None = None


def plan_loraprune(model: nn.Module, cfg: LoRAPruneConfig) -> LoRAPrunePlan:
    """What :func:`loraprune_` will remove, checked without changing anything. Raises a ValueError for a model that
    holds pruning masks; for neurons, one with MoE experts or no MLP, or MLPs of one field with different widths;
    for heads, one :func:`~prunekit.train.loraprune_units.plan_heads` refuses; and a smaller shape
    ``from_pretrained`` could not rebuild."""
    from ..structured.transformers.common import guard_masks, reload_problem_after
    from ..structured.transformers.layouts import all_mlps, groups_by_field
    from ..structured.transformers.neurons import _remove_neurons_

    guard_masks(model, False, "loraprune_")
    plan = LoRAPrunePlan()
    if cfg.what in ("neurons", "both"):
        dense, experts = all_mlps(model)
        if experts:
            raise ValueError(f"LoRAPrune prunes dense MLPs; {type(model).__name__} has MoE experts (use "
                             "prune_neurons_ or the experts stage for them, or what='heads')")
        if not dense:
            raise ValueError(f"found no MLP in {type(model).__name__} to prune (looked for gate/up/down_proj, "
                             "gate_up_proj/down_proj, fc1/fc2, c_fc/c_proj, …)")
        groups = groups_by_field(dense)
        keeps: dict[str | None, int] = {}
        for fieldname, members in groups.items():
            widths = {m.width for m in members}
            if len(widths) != 1:
                raise ValueError(f"MLPs sized by {fieldname or 'no config field'} have different widths "
                                 f"{sorted(widths)}; LoRAPrune removes the same count from each and needs one width "
                                 "per config field")
            keeps[fieldname] = keep_count(widths.pop(), cfg.sparsity)
        problem = reload_problem_after(model, lambda twin: _remove_neurons_(twin, keeps,
                                                                            lambda m, e, k: torch.arange(k)))
        if problem:
            raise ValueError(f"loraprune_: from_pretrained could not rebuild the smaller {type(model).__name__}: "
                             f"{problem}. Nothing was changed")
        plan.dense, plan.groups, plan.keeps = dense, groups, keeps
    if cfg.what in ("heads", "both"):
        plan.heads = plan_heads(model, cfg.head_sparsity if cfg.head_sparsity is not None else cfg.sparsity)
    return plan


@dataclass
class _Neurons:
    """The MLP neurons under LoRAPrune: per MLP, its layers, moving-average scores and the neurons gone."""

    layers: list  # (MLPParts, [NeuronLayer])
    final: float
    scores: list[Tensor] = field(default_factory=list)
    dead: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = [torch.zeros(part.width, dtype=torch.float64) for part, _ in self.layers]
        self.dead = [torch.zeros(part.width, dtype=torch.bool) for part, _ in self.layers]

    def modules(self) -> list[nn.Module]:
        return [layer.module for _, parts in self.layers for layer in parts]

    def update(self, criterion: str, ema: float) -> None:
        for (part, parts), score in zip(self.layers, self.scores):
            score.mul_(ema).add_(sum(layer.unit_scores(criterion, part.width) for layer in parts), alpha=1 - ema)

    def prune_to(self, target: float) -> bool:
        """Mask each MLP's lowest-scoring live neurons until ``target`` of them are gone; True when any went."""
        changed = False
        for (part, parts), score, gone in zip(self.layers, self.scores, self.dead):
            n = part.width
            need = n - keep_count(n, target) - int(gone.sum())
            if need <= 0:
                continue
            live = torch.where(gone, torch.full_like(score, math.inf), score)
            new = torch.argsort(live, stable=True)[:need]
            gone[new] = True
            for layer in parts:
                layer.mask_units_(new, n)
            changed = True
        return changed


@dataclass
class _Heads:
    """The attention heads under LoRAPrune: per attention layer, its units, moving-average scores and units gone."""

    layers: list[HeadLayer]
    plan: HeadPlan
    scores: list[Tensor] = field(default_factory=list)
    dead: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = [torch.zeros(h.count, dtype=torch.float64) for h in self.layers]
        self.dead = [torch.zeros(h.count, dtype=torch.bool) for h in self.layers]

    @property
    def final(self) -> float:
        return self.plan.fraction

    def modules(self) -> list[nn.Module]:
        return [m for h in self.layers for m in h.modules()]

    def update(self, criterion: str, ema: float) -> None:
        for h, score in zip(self.layers, self.scores):
            score.mul_(ema).add_(h.unit_scores(criterion), alpha=1 - ema)

    def prune_to(self, target: float) -> bool:
        """Mask each layer's lowest-scoring live units until the share of the planned cut ``target`` asks is gone."""
        remove = removal_count(self.plan, target, self.final)
        changed = False
        for h, score, gone in zip(self.layers, self.scores, self.dead):
            new = h.next_dead(score, gone, remove)
            if new.numel():
                gone[new] = True
                h.mask_units_(new)
                changed = True
        return changed


def loraprune_(model: nn.Module, calibration: Any, config: LoRAPruneConfig | dict | None = None, *,
               eval_windows: Tensor | None = None, progress: bool = True, **fields: Any) -> LoRAPruneReport:
    """Prune ``sparsity`` of every MLP's neurons (and/or, by ``what``, ``head_sparsity`` of every attention layer's
    heads) of a causal LM while fine-tuning it with LoRA on ``calibration`` token ids (see the module docstring); the
    model is changed in place and comes back smaller, adapters merged.

    Checked before anything changes: the config, the windows, units to prune, no pruning masks already on the
    model, and that ``from_pretrained`` can rebuild the smaller shape.
    """
    from ..metrics.perplexity import perplexity
    from ..structured.graph.report import count_params
    from ..structured.transformers.neurons import _remove_neurons_

    cfg = config if isinstance(config, LoRAPruneConfig) else LoRAPruneConfig.parse(config or {}, **fields)
    if isinstance(config, LoRAPruneConfig) and fields:
        cfg = config.replace(**fields)
    if calibration is None:
        raise ValueError("LoRAPrune fine-tunes while it prunes: pass calibration= token ids of shape (windows, tokens)")
    ids = checked_windows(model, calibration, cfg.seqlen, cfg.batch_size)
    plan = plan_loraprune(model, cfg)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR["lora"]
    before_ppl = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    params_before = count_params(model)
    widths_before = {(f or "unnamed"): members[0].width for f, members in plan.groups.items()}
    tracks: list[_Neurons | _Heads] = []
    if plan.dense:
        tracks.append(_Neurons([(part, [NeuronLayer(lin, True, gated) for lin, gated in part.ins] +
                                 [NeuronLayer(part.out, False)]) for part in plan.dense], cfg.sparsity))
    if plan.heads is not None:
        tracks.append(_Heads([HeadLayer(part, plan.heads.unit) for part in plan.heads.parts], plan.heads))
    masked = [m for t in tracks for m in t.modules()]
    for m in masked:
        set_mask_(m, torch.ones(m.weight.shape, dtype=torch.bool))  # shared with the adapter
    params = trainable_params_(model, "lora", cfg.rank, seed=cfg.seed)
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    originals = [m.parametrizations.weight.original for m in masked]
    if cfg.criterion == "gradient":
        for w in originals:
            w.requires_grad_(True)
    events: list[tuple[int, float]] = []
    start, cpu = time.perf_counter(), time.process_time()
    losses: list[float] = []
    try:
        losses = _train(model, params, ids, cfg, lr, progress, tracks, events, originals)
    finally:
        for w in originals:
            w.grad = None
        for p in frozen:
            p.requires_grad_(True)
        merge_lora_(model)
        for m in masked:
            remove_mask_(m, bake=True)
    for t in tracks:
        if isinstance(t, _Neurons):
            index = {id(part): i for i, (part, _) in enumerate(t.layers)}
            _remove_neurons_(model, plan.keeps, lambda m, e, k, t=t: torch.nonzero(~t.dead[index[id(m)]]).flatten(),
                             plan.groups)
        else:
            remove_heads_(model, plan.heads, t.dead)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after_ppl = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    widths = {k: (n, plan.keeps[None if k == "unnamed" else k]) for k, n in widths_before.items()}
    hp = plan.heads
    return LoRAPruneReport(cfg.criterion, cfg.sparsity, widths, len(plan.dense), params_before, count_params(model),
                           sum(p.numel() for p in params), len(losses), len(losses) * cfg.batch_size * ids.shape[1],
                           lr, seconds, cpu, events, hp.heads if hp else None, hp.kv_heads if hp else None,
                           len(hp.parts) if hp else 0, [hp.note] if hp and hp.note else [], before_ppl, after_ppl,
                           losses)


def _train(model: nn.Module, params: list[nn.Parameter], ids: Tensor, cfg: LoRAPruneConfig, lr: float,
           progress: bool, tracks: list, events: list[tuple[int, float]], originals: list[Tensor]) -> list[float]:
    """The fine-tune: AdamW, warm-up then cosine, clipped; after each backward the unit scores are updated, and
    every ``prune_every`` steps (and at the last) the units are masked up to the scheduled sparsity."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm))))
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    try:
        for step in tqdm(range(1, cfg.steps + 1), desc=f"LoRAPrune ({cfg.criterion})", disable=not progress,
                         leave=False):
            if len(order) < cfg.batch_size:
                order += torch.randperm(ids.shape[0], generator=gen).tolist()
            batch = ids[order[:cfg.batch_size]]
            del order[:cfg.batch_size]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"LoRAPrune loss became {value} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            for w in originals:
                w.grad = None
            loss.backward()
            for t in tracks:
                t.update(cfg.criterion, cfg.ema)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(value)
            if step % cfg.prune_every == 0 or step == cfg.steps:
                targets = [scheduled_sparsity(step, cfg.steps, t.final, cfg.warmup, cfg.cooldown) for t in tracks]
                if any([t.prune_to(target) for t, target in zip(tracks, targets)]):
                    events.append((step, targets[0]))
    finally:
        model.eval()
    return losses


__all__ = ["LoRAPruneConfig", "LoRAPrunePlan", "LoRAPruneReport", "lora_gradient", "loraprune_", "plan_loraprune",
           "scheduled_sparsity"]
