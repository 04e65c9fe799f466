"""LoRAPrune (Zhang et al., 2023): structured pruning of a language model's MLP neurons *during* LoRA fine-tuning,
ranked by a criterion built from LoRA's weights and gradients instead of the pre-trained weights' gradients.

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
from ..core.mask import Mask, remove_mask_, set_mask_
from ..core.scope import is_transposed
from .recovery import LoRA, merge_lora_, trainable_params_
from .recovery_lm import DEFAULT_LR, checked_windows, loss_ends
from .schedule import cubic, sparsity_at


class LoRAPruneConfig(Config):
    """Settings of :func:`loraprune_`: what is removed, by which criterion, on what schedule, with what LoRA."""

    what: Literal["neurons"] = "neurons"
    sparsity: Sparsity = 0.5
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


def lora_gradient(adapter: LoRA) -> Tensor:
    """LoRAPrune's estimate of the weight's gradient from its adapter: ``G_B·A + B·G_A − G_B·G_A`` (the weight's
    layout; zero where the adapters got no gradient)."""
    a, b = adapter.A.detach(), adapter.B.detach()
    ga = adapter.A.grad if adapter.A.grad is not None else torch.zeros_like(a)
    gb = adapter.B.grad if adapter.B.grad is not None else torch.zeros_like(b)
    return (gb @ a + b @ ga - gb @ ga).reshape(adapter.shape)


@dataclass
class _Layer:
    """One masked, adapted linear layer of an MLP, and whether its units are its rows (into the MLP) or columns."""

    module: nn.Module
    rows: bool
    gated: bool = False

    def parts(self) -> tuple[Tensor, Tensor | None, Tensor]:
        """The raw weight (the parametrization's ``original``), its LoRA adapter (or None) and its mask."""
        plist = self.module.parametrizations.weight
        mask = next(p.mask for p in plist if isinstance(p, Mask))
        adapter = next((p for p in plist if isinstance(p, LoRA)), None)
        return plist.original, adapter, mask

    def unit_scores(self, criterion: str, n: int) -> Tensor:
        """This layer's importance of each of the MLP's ``n`` neurons, divided by its L2 norm."""
        w, adapter, mask = self.parts()
        with torch.no_grad():
            effective = w.detach() * mask
            if adapter is not None:
                effective = effective + adapter.delta().detach()
            if criterion == "magnitude":
                imp = effective.abs()
            else:
                grad = w.grad if criterion == "gradient" else (lora_gradient(adapter) if adapter is not None else None)
                if grad is None:
                    return torch.zeros(n, dtype=torch.float64)
                imp = (grad * effective).abs()
            if is_transposed(self.module):
                imp = imp.t()
            imp = imp.reshape(imp.shape[0], -1).double()
            s = imp.sum(1) if self.rows else imp.sum(0)
            if self.gated:
                s = s[:n] + s[n:]
            return s / (torch.linalg.vector_norm(s) + 1e-12)

    def mask_units_(self, dead: Tensor, n: int) -> None:
        """Zero the mask of the given neurons (indices into the MLP's ``n``)."""
        _, _, mask = self.parts()
        units = torch.cat([dead, dead + n]) if self.gated else dead
        view = mask.t() if is_transposed(self.module) else mask  # (out, in), a view: the mask changes in place
        with torch.no_grad():
            if self.rows:
                view[units] = False
            else:
                view[:, units] = False


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
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; losses summarised by the means of the first and last tenth of the steps."""
        d = asdict(self)
        return {**d, **loss_ends(d.pop("losses"))}

    def __str__(self) -> str:
        widths = ", ".join(f"{k} {a} → {b}" for k, (a, b) in self.widths.items())
        ppl = ""
        if self.perplexity_before is not None and self.perplexity_after is not None:
            ppl = f", perplexity {self.perplexity_before:.2f} → {self.perplexity_after:.2f}"
        return (f"LoRAPrune ({self.criterion} criterion): {self.mlps} MLPs, {widths}; parameters "
                f"{self.params_before:,} → {self.params_after:,}; {self.steps} steps × "
                f"{self.tokens // max(self.steps, 1):,} tokens, lr {self.lr:g}, {len(self.events)} pruning events, "
                f"{self.seconds:.0f} s ({self.cpu_seconds:.0f} s CPU){ppl}")


def plan_loraprune(model: nn.Module, cfg: LoRAPruneConfig) -> tuple[list, dict, dict]:
    """What :func:`loraprune_` will remove, checked without changing anything: the dense MLPs, grouped by the config
    field of their width, and the neurons each group keeps. Raises a ValueError for a model with MoE experts or no
    MLP, one that holds pruning masks, MLPs of one field with different widths, or a smaller shape
    ``from_pretrained`` could not rebuild."""
    from ..structured.transformers.common import guard_masks, reload_problem_after
    from ..structured.transformers.layouts import all_mlps, groups_by_field
    from ..structured.transformers.neurons import _remove_neurons_

    dense, experts = all_mlps(model)
    if experts:
        raise ValueError(f"LoRAPrune prunes dense MLPs; {type(model).__name__} has MoE experts (use prune_neurons_ "
                         "or the experts stage for them)")
    if not dense:
        raise ValueError(f"found no MLP in {type(model).__name__} to prune (looked for gate/up/down_proj, "
                         "gate_up_proj/down_proj, fc1/fc2, c_fc/c_proj, …)")
    guard_masks(model, False, "loraprune_")
    groups = groups_by_field(dense)
    keeps: dict[str | None, int] = {}
    for fieldname, members in groups.items():
        widths = {m.width for m in members}
        if len(widths) != 1:
            raise ValueError(f"MLPs sized by {fieldname or 'no config field'} have different widths {sorted(widths)}; "
                             "LoRAPrune removes the same count from each and needs one width per config field")
        keeps[fieldname] = keep_count(widths.pop(), cfg.sparsity)
    problem = reload_problem_after(model, lambda twin: _remove_neurons_(twin, keeps, lambda m, e, k: torch.arange(k)))
    if problem:
        raise ValueError(f"loraprune_: from_pretrained could not rebuild the smaller {type(model).__name__}: {problem}. "
                         "Nothing was changed")
    return dense, groups, keeps


def loraprune_(model: nn.Module, calibration: Any, config: LoRAPruneConfig | dict | None = None, *,
               eval_windows: Tensor | None = None, progress: bool = True, **fields: Any) -> LoRAPruneReport:
    """Prune ``sparsity`` of every MLP's neurons of a causal LM while fine-tuning it with LoRA on ``calibration``
    token ids (see the module docstring); the model is changed in place and comes back smaller, adapters merged.

    Checked before anything changes: the config, the windows, an MLP to prune, no pruning masks already on the
    model, and that ``from_pretrained`` can rebuild the smaller shape.
    """
    from ..metrics.perplexity import perplexity
    from ..structured.graph.report import count_params
    from ..structured.transformers.layouts import MLPParts
    from ..structured.transformers.neurons import _remove_neurons_

    cfg = config if isinstance(config, LoRAPruneConfig) else LoRAPruneConfig.parse(config or {}, **fields)
    if isinstance(config, LoRAPruneConfig) and fields:
        cfg = config.replace(**fields)
    if calibration is None:
        raise ValueError("LoRAPrune fine-tunes while it prunes: pass calibration= token ids of shape (windows, tokens)")
    ids = checked_windows(model, calibration, cfg.seqlen, cfg.batch_size)
    dense, groups, keeps = plan_loraprune(model, cfg)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR["lora"]
    before_ppl = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    params_before = count_params(model)
    widths_before = {(f or "unnamed"): members[0].width for f, members in groups.items()}
    layers: list[tuple[MLPParts, list[_Layer]]] = []
    for part in dense:
        parts = [_Layer(lin, True, gated) for lin, gated in part.ins] + [_Layer(part.out, False)]
        for layer in parts:
            set_mask_(layer.module, torch.ones(layer.module.weight.shape, dtype=torch.bool))  # shared with the adapter
        layers.append((part, parts))
    params = trainable_params_(model, "lora", cfg.rank, seed=cfg.seed)
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    originals = [layer.parts()[0] for _, parts in layers for layer in parts]
    if cfg.criterion == "gradient":
        for w in originals:
            w.requires_grad_(True)
    scores = [torch.zeros(part.width, dtype=torch.float64) for part, _ in layers]
    dead = [torch.zeros(part.width, dtype=torch.bool) for part, _ in layers]
    events: list[tuple[int, float]] = []
    start, cpu = time.perf_counter(), time.process_time()
    losses: list[float] = []
    try:
        losses = _train(model, params, ids, cfg, lr, progress, layers, scores, dead, events, originals)
    finally:
        for w in originals:
            w.grad = None
        for p in frozen:
            p.requires_grad_(True)
        merge_lora_(model)
        for _, parts in layers:
            for layer in parts:
                remove_mask_(layer.module, bake=True)
    index = {id(part): i for i, (part, _) in enumerate(layers)}
    _remove_neurons_(model, keeps, lambda m, e, k: torch.nonzero(~dead[index[id(m)]]).flatten(), groups)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after_ppl = perplexity(model, eval_windows, progress=False) if eval_windows is not None else None
    widths = {k: (n, keeps[None if k == "unnamed" else k]) for k, n in widths_before.items()}
    return LoRAPruneReport(cfg.criterion, cfg.sparsity, widths, len(dense), params_before, count_params(model),
                           sum(p.numel() for p in params), len(losses), len(losses) * cfg.batch_size * ids.shape[1],
                           lr, seconds, cpu, events, before_ppl, after_ppl, losses)


def _train(model: nn.Module, params: list[nn.Parameter], ids: Tensor, cfg: LoRAPruneConfig, lr: float,
           progress: bool, layers: list, scores: list[Tensor], dead: list[Tensor],
           events: list[tuple[int, float]], originals: list[Tensor]) -> list[float]:
    """The fine-tune: AdamW, warm-up then cosine, clipped; after each backward the neuron scores are updated,
    and every ``prune_every`` steps (and at the last) the MLPs are masked up to the scheduled sparsity."""
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
            for i, (part, parts) in enumerate(layers):
                step_scores = sum(layer.unit_scores(cfg.criterion, part.width) for layer in parts)
                scores[i].mul_(cfg.ema).add_(step_scores, alpha=1 - cfg.ema)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(value)
            if step % cfg.prune_every == 0 or step == cfg.steps:
                target = scheduled_sparsity(step, cfg.steps, cfg.sparsity, cfg.warmup, cfg.cooldown)
                if _prune_to_(layers, scores, dead, target):
                    events.append((step, target))
    finally:
        model.eval()
    return losses


def _prune_to_(layers: list, scores: list[Tensor], dead: list[Tensor], target: float) -> bool:
    """Mask each MLP's lowest-scoring live neurons until ``target`` of them are gone; True when any went."""
    changed = False
    for (part, parts), score, gone in zip(layers, scores, dead):
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
