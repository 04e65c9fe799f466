"""``prune_experts_`` and ``merge_experts_``: fewer routed experts in every MoE layer, layer by layer.

Both walk the model with the block engine (:func:`prunekit.calibrate.walk_blocks_`): each block's MoE
input is captured on the calibration tokens, its experts are scored (or grouped) and removed (or merged)
in place, and the block's *new* outputs feed the next block. One layer's experts and one layer's tokens
are in play at a time. The config's expert count follows, so ``save_pretrained`` writes a folder that
``from_pretrained`` reloads with stock transformers classes. Every check (the sparsity, top-k, routing
groups, renormalisation) runs on every layer before any weight changes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.config import Config
from ..core.fraction import check_fraction
from .config import EXPERT_SCORE_NAMES, ExpertMergeConfig, ExpertPruneConfig
from .find import find_moe_layers
from .layout import NUM_EXPERT_KEYS, MoeLayer
from .merging import assign_groups, merge_layer_
from .score import check_keep, choose_keep, layer_stats, reconstruction_scores


@dataclass
class ExpertLayerReport:
    """What happened to one MoE layer."""

    name: str
    experts_before: int
    experts_after: int
    kept: list[int]
    scores: list[float]
    frequency: list[float]
    merged: dict[int, list[int]] | None = None
    reconstruction_error: float | None = None  # relative routed-output error after the last removal


@dataclass
class ExpertReport:
    """What :func:`prune_experts_` / :func:`merge_experts_` did."""

    method: str
    score: str
    sparsity: float
    experts_before: int
    experts_after: int
    params_before: int
    params_after: int
    renormalize: bool
    layers: list[ExpertLayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def actual_sparsity(self) -> float:
        return 1 - self.experts_after / self.experts_before if self.experts_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        d = asdict(self)
        d["actual_sparsity"] = self.actual_sparsity
        return d

    def __str__(self) -> str:
        what = "merged" if self.method == "expert_merge" else f"removed by {self.score}"
        lines = [f"{self.method}: {self.experts_before} → {self.experts_after} experts per MoE layer "
                 f"({self.actual_sparsity:.0%} {what}, target {self.sparsity:.0%}) in {len(self.layers)} layers; "
                 f"parameters {self.params_before:,} → {self.params_after:,}; "
                 f"router renormalised: {'yes' if self.renormalize else 'as before'}; {self.seconds:.1f} s"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class ExpertPlan:
    """The checked plan: every MoE layer, how many experts each keeps, the settings."""

    layers: list[MoeLayer]
    per_group: int
    keep: int
    experts: int
    renormalize: bool
    notes: list[str]


def _renorm_flag(layer: MoeLayer, config: Any) -> str | None:
    """How ``renormalize=True`` is applied to this layer's router: an attribute name, "" when it already
    renormalises, None when it cannot be."""
    r = layer.routing
    if r.rule == "topk_softmax" or (r.rule == "softmax_topk" and r.renormalize) or \
            (r.rule == "sigmoid_group" and r.renormalize):
        return ""
    for obj in (layer.router, layer.block):
        if hasattr(obj, "norm_topk_prob"):
            return "norm_topk_prob"
    if config is not None and hasattr(config, "norm_topk_prob"):
        return "norm_topk_prob"
    return None


def plan_experts(model: nn.Module, sparsity: float, *, renormalize: bool = False) -> ExpertPlan:
    """Check that ``sparsity`` of every MoE layer's experts can be removed and return the plan; changes nothing.

    A ValueError when the model has no MoE layer, when the layers differ in expert count (the config holds
    one), when too few experts would be left for top-k or for the routing groups, or when the router cannot
    be made to renormalise."""
    sparsity = check_fraction(sparsity, "sparsity", "[0, 1)")
    layers = find_moe_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no mixture-of-experts layer (a module with a router and "
                         "routed experts); nothing to prune. Expert pruning needs an MoE model (Mixtral, "
                         "Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS, …)")
    counts = {l.num_experts for l in layers}
    if len(counts) > 1:
        raise ValueError(f"the MoE layers hold different numbers of experts ({sorted(counts)}); the config names one "
                         "count, so prunekit keeps the layers equal and cannot prune this model")
    per, keep = check_keep(layers[0], sparsity)
    for l in layers[1:]:
        check_keep(l, sparsity)
    notes: list[str] = []
    E = layers[0].num_experts
    if keep == E:
        notes.append(f"sparsity={sparsity} removes no expert of {E} (rounded down per routing group); the model is unchanged")
    config = getattr(model, "config", None)
    if renormalize:
        for l in layers:
            flag = _renorm_flag(l, config)
            if flag is None:
                raise ValueError(f"renormalize=True: the router of {l.name} ({type(l.router).__name__}) has no "
                                 "norm_topk_prob switch; prunekit cannot make it renormalise")
        if all(_renorm_flag(l, config) == "" for l in layers):
            notes.append("renormalize=True: the router already renormalises its top-k weights; nothing to change")
    return ExpertPlan(layers, per, keep, E, renormalize, notes)


def _set_config(model: nn.Module, n: int, renormalize: bool) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    cfgs = [config] + [getattr(config, a) for a in ("text_config",) if getattr(config, a, None) is not None]
    for c in cfgs:
        for key in NUM_EXPERT_KEYS:
            if isinstance(getattr(c, key, None), int):
                setattr(c, key, n)
        if renormalize and hasattr(c, "norm_topk_prob"):
            c.norm_topk_prob = True


def _apply_renorm(layer: MoeLayer) -> None:
    for obj in (layer.router, layer.block):
        if hasattr(obj, "norm_topk_prob"):
            obj.norm_topk_prob = True
    layer.routing.renormalize = True


def _capture(block: nn.Module, names: list[str], inputs: list[Any]) -> dict[str, Tensor]:
    """Run ``block`` on its calibration inputs and return each MoE module's input tokens ``(T, H)``."""
    from ..calibrate import run_block

    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []
    mods = dict(block.named_modules())
    for n in names:
        def hook(_m, args, kwargs, n=n):
            x = args[0] if args else kwargs["hidden_states"]
            seen[n].append(x.detach().reshape(-1, x.shape[-1]))
        handles.append(mods[n].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        for s in inputs:
            run_block(block, s)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _experts_(model: nn.Module, config: Config, calibration: Any, *, batch_size: int, device: Any,
              progress: bool) -> ExpertReport:
    from ..calibrate import walk_blocks_

    started = time.perf_counter()
    merging = isinstance(config, ExpertMergeConfig)
    if calibration is None:
        raise ValueError("expert pruning and merging score experts on calibration tokens: pass calibration= "
                         "(e.g. prunekit.datasets.text.calibration_windows(tokenizer, 'pydocs', 32, 512))")
    plan = plan_experts(model, config.sparsity, renormalize=config.renormalize)
    params_before = sum(p.numel() for p in model.parameters())
    score = "frequency" if merging else config.score  # type: ignore[attr-defined]
    report = ExpertReport(method=config.method, score=score, sparsity=config.sparsity,  # type: ignore[attr-defined]
                          experts_before=plan.experts, experts_after=plan.keep, params_before=params_before,
                          params_after=params_before, renormalize=config.renormalize, notes=list(plan.notes))
    if plan.keep == plan.experts and not config.renormalize:
        report.seconds = time.perf_counter() - started
        return report
    by_block: dict[int, list[MoeLayer]] = {}
    from ..calibrate import find_blocks

    blocks = find_blocks(model)
    owner = {id(m): i for i, b in enumerate(blocks.modules) for m in b.modules()}
    for layer in plan.layers:
        if id(layer.block) not in owner:
            raise ValueError(f"MoE layer {layer.name} is outside the transformer blocks; the engine cannot reach it")
        by_block.setdefault(owner[id(layer.block)], []).append(layer)

    def visit(i: int, name: str, block: nn.Module, inputs: list[Any]) -> None:
        layers = by_block.get(i)
        if not layers:
            return
        rel = {l.name: next(n for n, m in block.named_modules() if m is l.block) for l in layers}
        xs = _capture(block, list(rel.values()), inputs)
        for l in layers:
            x = xs[rel[l.name]]
            stats = layer_stats(l, x, reap=(score == "reap"))
            err = None
            if merging:
                groups = assign_groups(l, stats, plan.per_group)
                kept = sorted(groups)
                scores = stats.frequency
                if plan.keep < plan.experts:
                    merge_layer_(l, groups, stats.frequency, align=config.align)  # type: ignore[attr-defined]
            else:
                if score == "reconstruction":
                    scores, errors = reconstruction_scores(l, x, plan.per_group)
                    err = errors[-1] if errors else 0.0
                else:
                    scores = stats.reap if score == "reap" else stats.frequency
                kept = choose_keep(l, scores, plan.per_group)
                groups = None
                if plan.keep < plan.experts:
                    l.keep_(kept)
            if config.renormalize:
                _apply_renorm(l)
            report.layers.append(ExpertLayerReport(
                name=l.name, experts_before=plan.experts, experts_after=len(kept), kept=kept,
                scores=[float(s) for s in scores], frequency=[float(f) for f in stats.frequency],
                merged={int(c): [int(m) for m in ms] for c, ms in groups.items()} if groups else None,
                reconstruction_error=err))

    walk_blocks_(model, calibration, visit, batch_size=batch_size, device=device, progress=progress,
                 desc="merging experts" if merging else "pruning experts")
    _set_config(model, plan.keep, config.renormalize)
    report.params_after = sum(p.numel() for p in model.parameters())
    report.seconds = time.perf_counter() - started
    return report


def prune_experts_(model: nn.Module, sparsity: float | None = None, *, score: str = "reap", calibration: Any = None,
                   renormalize: bool = False, config: ExpertPruneConfig | dict | None = None, batch_size: int = 8,
                   device: Any = None, progress: bool = True) -> ExpertReport:
    """Remove the fraction ``sparsity`` of the routed experts of every MoE layer, those scoring lowest by
    ``score`` (``"frequency"``, ``"reap"`` or ``"reconstruction"``) on ``calibration`` token ids; in place.

    Router rows (and biases) and expert weights go together; the config's expert count follows; with
    ``renormalize`` the router renormalises its top-k weights afterwards. ``config`` (an
    :class:`ExpertPruneConfig` or its dict) is the same call."""
    if config is None:
        if score not in EXPERT_SCORE_NAMES:
            import difflib

            close = difflib.get_close_matches(str(score), EXPERT_SCORE_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown expert score {score!r}{hint}; known: {', '.join(EXPERT_SCORE_NAMES)}")
        if sparsity is None:
            raise ValueError("sparsity is required: the fraction of each layer's experts to remove, in [0, 1)")
        check_fraction(sparsity, "sparsity", "[0, 1)")
        config = ExpertPruneConfig.parse(sparsity=sparsity, score=score, renormalize=renormalize)
    elif not isinstance(config, ExpertPruneConfig):
        config = ExpertPruneConfig.parse(config)
    return _experts_(model, config, calibration, batch_size=batch_size, device=device, progress=progress)


def merge_experts_(model: nn.Module, sparsity: float | None = None, *, calibration: Any = None, align: bool = True,
                   renormalize: bool = False, config: ExpertMergeConfig | dict | None = None, batch_size: int = 8,
                   device: Any = None, progress: bool = True) -> ExpertReport:
    """Merge the experts of every MoE layer into ``1 − sparsity`` of their number (M-SMoE's frequency-weighted
    merging, grouped by router-logit similarity, neurons aligned when ``align``); in place."""
    if config is None:
        if sparsity is None:
            raise ValueError("sparsity is required: the fraction of each layer's experts merged away, in [0, 1)")
        check_fraction(sparsity, "sparsity", "[0, 1)")
        config = ExpertMergeConfig.parse(sparsity=sparsity, align=align, renormalize=renormalize)
    elif not isinstance(config, ExpertMergeConfig):
        config = ExpertMergeConfig.parse(config)
    return _experts_(model, config, calibration, batch_size=batch_size, device=device, progress=progress)
