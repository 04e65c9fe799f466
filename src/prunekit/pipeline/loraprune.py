"""The loraprune stage: remove a share of every MLP's neurons (and/or attention heads) while LoRA fine-tunes the
model on its calibration text, ranked by LoRA's weights and gradients (:mod:`prunekit.train.loraprune`) —
``prunekit prune --loraprune 0.5 [--loraprune-what both]``:

    - stage: loraprune
      sparsity: 0.5
      what: neurons            # neurons | heads | both
      criterion: lora          # lora (the paper's) | gradient (the weights' true gradients) | magnitude
      steps: 100

It is a pruning stage of its own (instead of masks, ``--structured``, ``--slice`` or ``--experts``): it trains
while it prunes, and the model it leaves is plain, smaller and merged, so no recovery stage is needed after it.
Checked before any stage runs: calibration text with enough windows for one batch, dense MLPs of one width per
config field (for neurons), a head cut the layout allows (for heads), no pruning masks, a smaller shape
``from_pretrained`` can rebuild.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..core.config import Config
from .base import StageKind, StageResult, Workspace, register_stage


def _parse(d: Mapping[str, Any], where: str | None) -> Config:
    from ..train.loraprune import LoRAPruneConfig

    return LoRAPruneConfig.parse(d, where=where)


def _check(ws: Workspace, cfg: Any) -> None:
    from ..train.loraprune import plan_loraprune
    from .stages import check_training_windows

    check_training_windows(ws, cfg, "loraprune", "fine-tunes a language model while it prunes")
    plan_loraprune(ws.model, cfg)


def _run(ws: Workspace, cfg: Any) -> StageResult:
    from ..train.loraprune import loraprune_

    if "seed" not in cfg.model_fields_set:
        cfg = cfg.replace(seed=ws.seed)  # the run's seed: the adapters' draw and the window order
    units = {"neurons": "every MLP's neurons", "heads": "every attention layer's heads",
             "both": "every MLP's neurons and attention layer's heads"}[cfg.what]
    ws.say(f"LoRAPrune: removing {cfg.sparsity:.0%} of {units} over {cfg.steps} LoRA steps "
           f"({cfg.criterion} criterion) ...")
    report = loraprune_(ws.model, ws.calibration, cfg, progress=ws.progress)
    meta = {"method": "loraprune", "settings": {"sparsity": cfg.sparsity, "what": cfg.what, "criterion": cfg.criterion},
            "loraprune": report.to_dict(), "prune_seconds": report.seconds}
    return StageResult(report.to_dict(), meta, str(report))


register_stage(StageKind(
    "loraprune", _parse, _run,
    "remove a share of every MLP's neurons and/or attention heads while LoRA fine-tunes on the calibration text, "
    "ranked by LoRA's weights and gradients (LoRAPrune; prunekit.train.loraprune)",
    check=_check, removes=True, needs_calibration=lambda cfg: True,
    uses_calibration="fine-tunes on the calibration text while it prunes", trigger="--loraprune", noun="LoRAPrune",
    summary="removes MLP neurons or heads while LoRA trains (LoRAPrune)", hint="say how much with --loraprune",
    flags={"--loraprune": "sparsity", "--loraprune-what": "what", "--loraprune-criterion": "criterion",
           "--loraprune-steps": "steps"}))
