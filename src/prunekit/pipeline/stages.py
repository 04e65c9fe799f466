"""The stages that change a model: prune (masks: unstructured, N:M, any registered method), structured
(heads, neurons, blocks; any network's channels), slice (SliceGPT), experts (MoE experts removed or merged), recover (an LLM
fine-tuned on its calibration text), finetune (a classifier), finalize (masks baked in), tokens (token pruning
or merging at inference: a patch, weights unchanged).

Each is registered in :data:`prunekit.pipeline.STAGES` with its typed config, its check and its run.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Mapping

from pydantic import Field

from ..core.config import Config
from .base import StageKind, StageResult, Workspace, register_stage


# ------------------------------------------------------------------------------------------ prune (masks)


def _methods() -> Any:
    from ..methods import METHODS

    return METHODS


def _parse_prune(d: Mapping[str, Any], where: str | None) -> Config:
    from ..methods import METHODS

    return METHODS.parse_config(d, where=where)


def _prune_inputs(ws: Workspace) -> dict[str, Any]:
    return ws.prune_inputs()


def _check_prune(ws: Workspace, cfg: Any) -> None:
    from ..methods import plan_prune

    # every check, changes nothing; the plan is made once and applied by the run
    ws.state[("prune plan", id(cfg))] = plan_prune(ws.model, cfg, progress=ws.progress, **_prune_inputs(ws))


def _run_prune(ws: Workspace, cfg: Any) -> StageResult:
    from ..methods import apply_plan_, plan_prune

    ws.say(f"pruning with {cfg.method} ({cfg.pattern}, {cfg.allocation}) ...")
    plan = ws.state.pop(("prune plan", id(cfg)), None)
    if plan is None:
        plan = plan_prune(ws.model, cfg, progress=ws.progress, **_prune_inputs(ws))
    report = apply_plan_(ws.model, plan)
    meta = {"method": cfg.method, "config": cfg.to_dict(), "prune_seconds": report.seconds,
            "sparsity_in_scope": report.sparsity,
            "settings": {"sparsity": report.target_sparsity, "pattern": report.pattern,
                         "allocation": report.allocation}, "layers": report.layers}
    record = {"sparsity": report.sparsity, "seconds": report.seconds, "skipped": report.skipped}
    return StageResult(record, meta, str(report))


def _method_needs_calibration(cfg: Any) -> bool:
    return bool(getattr(type(cfg), "needs_calibration", False))


register_stage(StageKind(
    "prune", _parse_prune, _run_prune, "mask weights with any registered method (prunekit.prune_): unstructured, "
    "per row, N:M, blocks", check=_check_prune, needs_calibration=_method_needs_calibration,
    uses_calibration="needs calibration text (it prunes block by block on its activations)",
    noun="weight pruning (masks)", variants=_methods,
    flags={"--method": "method", "--sparsity": "sparsity", "--pattern": "pattern", "--allocation": "allocation",
           "--device": "device"}))


# ------------------------------------------------------------------------------------------- structured


def _units() -> Any:
    from ..structured import TRANSFORMER_UNITS

    return TRANSFORMER_UNITS


def _parse_structured(d: Mapping[str, Any], where: str | None) -> Config:
    from ..structured import TRANSFORMER_UNITS, StructuredConfig

    if d.get("what") == "channels":  # any network: the dependency graph's coupled channel groups
        return StructuredConfig.parse(d, where=where)
    return TRANSFORMER_UNITS.parse_config(d, where=where)


def _check_structured(ws: Workspace, cfg: Any) -> None:
    if cfg.what == "channels" and ws.example_inputs is None:
        raise ValueError("structured channels records the model's graph on example inputs, and this workspace has "
                         "none (Workspace(example_inputs=...); a classification task gives them)")


def _run_channels(ws: Workspace, cfg: Any) -> StageResult:
    from ..structured import prune_

    ws.say(f"removing {cfg.sparsity:.0%} of the channels of every coupled group ...")
    report = prune_(ws.model, ws.example_inputs, config=cfg, loss_fn=ws.loss_fn, data=ws.data)
    meta = {"method": "structured-channels", "config": cfg.to_dict(), "settings": {"sparsity": cfg.sparsity},
            "structured": report.to_dict(), "prune_seconds": report.seconds}
    return StageResult(report.to_dict(), meta, f"structured, {cfg.sparsity:.0%} of the channels asked: "
                       f"{str(report).splitlines()[0]}")


def _run_structured(ws: Workspace, cfg: Any) -> StageResult:
    from ..structured import prune_transformer_

    if cfg.what == "channels":
        return _run_channels(ws, cfg)
    ws.say(f"removing {cfg.sparsity:.0%} of the {cfg.what} ...")
    t0 = time.perf_counter()
    removed = prune_transformer_(ws.model, cfg, calibration=ws.calibration, progress=ws.progress)
    if not removed.reloadable:
        ws.warn("from_pretrained cannot rebuild this model from its config (see the report's notes)")
    meta = {"method": f"structured-{cfg.what}", "settings": {"sparsity": cfg.sparsity},
            "structured": removed.to_dict(), "prune_seconds": time.perf_counter() - t0}
    # the headline says what was asked; the unit's report says what was removed (a GQA model may not reach it)
    return StageResult(removed.to_dict(), meta, f"structured, {cfg.sparsity:.0%} of the {cfg.what} asked: {removed}")


register_stage(StageKind(
    "structured", _parse_structured, _run_structured,
    "remove attention heads (whole GQA groups), MLP neurons or blocks of a transformer, or the channels of any "
    "network's coupled groups (what: channels, on example inputs) (prunekit.structured)",
    check=_check_structured, removes=True, needs_calibration=lambda cfg: cfg.what == "layers",
    uses_calibration="ranks blocks on calibration text", trigger="--structured",
    variants=_units,
    noun="structured pruning", summary="removes whole heads, neurons or blocks ranked by its own importance",
    hint="say how much with --sparsity", flags={"--structured": "what", "--sparsity": "sparsity"}))


# ------------------------------------------------------------------------------------------------ slice


def _parse_slice(d: Mapping[str, Any], where: str | None) -> Config:
    from ..slicing import SliceConfig

    return SliceConfig.parse(d, where=where)


def _check_slice(ws: Workspace, cfg: Any) -> None:
    from ..slicing import plan_slice

    plan_slice(ws.model, cfg.sparsity, head=cfg.head, round_to=cfg.round_to, allow_growth=cfg.allow_growth,
               rotation=cfg.rotation)


def _run_slice(ws: Workspace, cfg: Any) -> StageResult:
    from ..slicing import slice_

    ws.say(f"slicing {cfg.sparsity:.0%} of the residual stream (SliceGPT) ...")
    sliced = slice_(ws.model, cfg, calibration=ws.calibration, progress=ws.progress)
    meta = {"method": "slicegpt", "settings": {"sparsity": cfg.sparsity, "head": sliced.head, "rotation": cfg.rotation},
            "sliced": sliced.to_dict(), "prune_seconds": sliced.seconds}
    return StageResult(sliced.to_dict(), meta, str(sliced))


register_stage(StageKind(
    "slice", _parse_slice, _run_slice, "SliceGPT: delete a share of the residual stream's width (prunekit.slicing)",
    check=_check_slice, removes=True, needs_calibration=lambda cfg: True,
    uses_calibration="needs calibration text for its PCA", trigger="--slice", noun="slicing",
    summary="replaces the weights with a narrower dense model (SliceGPT)", hint="say how much with --slice",
    flags={"--slice": "sparsity", "--slice-head": "head", "--slice-rotation": "rotation"}))


# ---------------------------------------------------------------------------------------------- experts


def _expert_methods() -> Any:
    from ..experts.config import EXPERT_METHODS

    return EXPERT_METHODS


def _parse_experts(d: Mapping[str, Any], where: str | None) -> Config:
    from ..experts.config import EXPERT_METHODS

    return EXPERT_METHODS.parse_config({"method": "expert_prune", **d}, where=where)


def _check_experts(ws: Workspace, cfg: Any) -> None:
    from ..experts import plan_experts

    plan_experts(ws.model, cfg.sparsity, renormalize=cfg.renormalize)


def _run_experts(ws: Workspace, cfg: Any) -> StageResult:
    from ..experts import merge_experts_, prune_experts_

    t0 = time.perf_counter()
    if cfg.method == "expert_merge":
        report = merge_experts_(ws.model, config=cfg, calibration=ws.calibration, device=cfg.device,
                                progress=ws.progress)
        settings = {"sparsity": cfg.sparsity, "renormalize": cfg.renormalize, "align": cfg.align}
    else:
        report = prune_experts_(ws.model, config=cfg, calibration=ws.calibration, device=cfg.device,
                                progress=ws.progress)
        settings = {"sparsity": cfg.sparsity, "score": cfg.score, "renormalize": cfg.renormalize}
    meta = {"method": report.method, "settings": settings, "experts": report.to_dict(),
            "prune_seconds": time.perf_counter() - t0}
    return StageResult(report.to_dict(), meta, str(report).splitlines()[0])


register_stage(StageKind(
    "experts", _parse_experts, _run_experts,
    "MoE models: remove (expert_prune) or merge (expert_merge) a share of every MoE layer's routed experts",
    check=_check_experts, removes=True, needs_calibration=lambda cfg: True,
    uses_calibration="ranks experts on the routing of calibration text", trigger="--experts", noun="expert pruning",
    variants=_expert_methods,
    summary="removes whole experts", hint="say how many with --experts",
    flags={"--experts": "sparsity", "--expert-score": "score", "--merge-experts": "method",
           "--renormalize": "renormalize", "--device": "device"}))


# ---------------------------------------------------------------------------------------------- recover


def _parse_recover(d: Mapping[str, Any], where: str | None) -> Config:
    from ..train.recovery_lm import RecoveryConfig

    return RecoveryConfig.parse(d, where=where)


def check_training_windows(ws: Workspace, cfg: Any, stage: str, what: str) -> None:
    """A stage that trains a language model on its calibration text (``cfg.seqlen``, ``cfg.batch_size``): the text
    is there and fills one batch; else one line naming the stage (``what`` it does) and the fix."""
    from ..train.recovery_lm import training_windows

    if ws.calibration is None:
        raise ValueError(f"stage {stage!r} {what} on calibration text; this task has none "
                         "(for classification tasks use stage 'finetune')")
    rows = training_windows(ws.calibration, cfg.seqlen).shape[0]
    if rows < cfg.batch_size:
        nsamples = ws.calibration.shape[0]
        need = -(-cfg.batch_size * nsamples // rows)
        raise ValueError(f"stage {stage!r} trains on batches of {cfg.batch_size} windows, but the {nsamples} "
                         f"calibration windows give {rows}; calibrate on at least {need} "
                         f"({ws.name_of('calibrate', 'nsamples')} {need})")


def _check_recover(ws: Workspace, cfg: Any) -> None:
    check_training_windows(ws, cfg, "recover", "fine-tunes a language model")


def _run_recover(ws: Workspace, cfg: Any) -> StageResult:
    from ..train.recovery_lm import recover_lm_

    if "seed" not in cfg.model_fields_set:
        cfg = cfg.replace(seed=ws.seed)  # the run's seed (--seed, a recipe's seeds): LoRA's init and window order
    ws.say(f"recovering ({cfg.recover}, {cfg.steps} steps on the calibration text) ...")
    rec = recover_lm_(ws.model, ws.calibration, cfg, progress=ws.progress)  # masks stay in force while training
    return StageResult(rec.to_dict(), {"recovery": rec.to_dict()}, str(rec))


register_stage(StageKind(
    "recover", _parse_recover, _run_recover,
    "fine-tune a pruned language model on its calibration text: bias_norm, lora or full, masks kept",
    check=_check_recover, needs_calibration=lambda cfg: True, uses_calibration="fine-tunes on the calibration text",
    trigger="--recover", noun="recovery",
    flags={"--recover": "recover", "--recover-steps": "steps", "--recover-lr": "lr", "--recover-seqlen": "seqlen"}))


# --------------------------------------------------------------------------------------------- finetune


class FinetuneConfig(Config):
    """A short fine-tune of a classification model, masks kept (``epochs`` of the training set)."""

    stage: Literal["finetune"] = "finetune"
    epochs: float = Field(0.25, gt=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(128, ge=1)


def _check_finetune(ws: Workspace, cfg: FinetuneConfig) -> None:
    from .data import KEPT, USED

    if ws.train_set is None:
        raise ValueError("stage 'finetune' needs a classification task (for language models use a recovery stage)")
    kept = ws.state.get(KEPT)  # a data stage before this one keeps a subset (its check ran first)
    if kept is not None:
        if kept < cfg.batch_size:
            raise ValueError(f"the data stage keeps {kept} examples, fewer than one finetune batch of "
                             f"{cfg.batch_size}; keep more or use a batch_size of at most {kept}")
        ws.state[USED] = True


def _run_finetune(ws: Workspace, cfg: FinetuneConfig) -> StageResult:
    from ..train import fit
    from .data import trained_on_selection

    sampler = trained_on_selection(ws)  # the examples a data stage kept, else the whole training set
    losses = fit(ws.model, ws.train_set(ws.seed), epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                 seed=ws.seed + 1, progress=False, sampler=sampler)
    record = {"steps": len(losses), "final_loss": float(losses[-1]) if losses else None,
              "examples": len(sampler) if sampler is not None else len(ws.train_set(ws.seed))}
    return StageResult(record, {}, f"fine-tuned {len(losses)} steps")


register_stage(StageKind(
    "finetune", lambda d, where: FinetuneConfig.parse({"stage": "finetune", **d}, where=where), _run_finetune,
    "fine-tune a classification model briefly, masks kept", check=_check_finetune, noun="fine-tuning"))


# --------------------------------------------------------------------------------------------- finalize


class FinalizeConfig(Config):
    """Bake the masks into the weights (``prunekit.finalize_``)."""

    stage: Literal["finalize"] = "finalize"


def _run_finalize(ws: Workspace, cfg: FinalizeConfig) -> StageResult:
    from ..core.mask import finalize_

    return StageResult({"tensors": len(finalize_(ws.model).tensors)})


register_stage(StageKind(
    "finalize", lambda d, where: FinalizeConfig.parse({"stage": "finalize", **d}, where=where), _run_finalize,
    "bake masks into the weights", noun="finalizing"))


# ----------------------------------------------------------------------------------------------- tokens


def _token_methods() -> Any:
    from ..tokens import TOKEN_METHODS

    return TOKEN_METHODS


def _parse_tokens(d: Mapping[str, Any], where: str | None) -> Config:
    from ..tokens import TOKEN_METHODS

    return TOKEN_METHODS.parse_config(d, where=where)


def _validate_tokens(cfg: Any, stages: Any, name_of: Any) -> None:
    if sum(kind == "tokens" for kind, _ in stages) > 1:
        raise ValueError("a model carries one token patch: list one tokens stage (a second would be refused "
                         "after the first patched the model)")


def _check_tokens(ws: Workspace, cfg: Any) -> None:
    from ..tokens import apply_, unpatch_

    # the patch's own checks (model family, layers, settings), then undone exactly: nothing changes
    apply_(ws.model, cfg)
    unpatch_(ws.model)


def _run_tokens(ws: Workspace, cfg: Any) -> StageResult:
    from ..tokens import apply_

    ws.say(f"patching the model with token {cfg.method} ...")
    report = apply_(ws.model, cfg)
    return StageResult(report.to_dict(), {"tokens": report.to_dict()}, str(report).splitlines()[0])


register_stage(StageKind(
    "tokens", _parse_tokens, _run_tokens,
    "token pruning or merging at inference (prunekit.tokens): ToMe, attention-ranked pruning in encoders, FastV "
    "in decoders; weights unchanged, prunekit.tokens.unpatch_ undoes it", check=_check_tokens,
    validate=_validate_tokens, variants=_token_methods, noun="token pruning"))
