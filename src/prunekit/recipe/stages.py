"""The stages a recipe lists: the stage kinds of :mod:`prunekit.pipeline` that change the model.

A stage is a mapping with ``stage: <kind>`` and the fields of that kind's config:

    - stage: prune            # the rest is a method config (prunekit.methods.config): masks, any method,
      method: wanda           # unstructured, per row, N:M (pattern: 2:4), blocks
      sparsity: 0.5
    - stage: structured       # heads (whole GQA groups), neurons or layers of a transformer
      what: heads
      sparsity: 0.25
    - stage: slice            # SliceGPT (prunekit.slicing.SliceConfig)
      sparsity: 0.25
    - stage: experts          # MoE experts removed (method: expert_prune) or merged (expert_merge)
      sparsity: 0.5
    - stage: recover          # an LLM fine-tuned on its calibration text (prunekit.train.RecoveryConfig)
      recover: lora
    - stage: data             # score → select the training examples (prunekit.data); the finetune after it
      score: el2n             # trains on the kept ones (sampler: rs2 on a fresh random share each epoch)
      select: {strategy: ccs, keep: 0.3}
    - stage: finetune         # a short masked fine-tune (classification tasks)
      epochs: 0.5
    - stage: finalize         # masks baked into the weights
    - stage: tokens           # a token patch (prunekit.tokens): FastV for decoders, ToMe / attention for encoders
      method: fastv
      keep: 0.5
    - stage: export           # written where users run it: to: safetensors | compressed | gguf, out: a path
      to: gguf
      out: pruned.gguf

The task loads the model, takes the calibration and evaluation data and measures; the other stage
kinds of the registry (load, calibrate, measure, save) are what ``prunekit prune`` adds around these.
A new kind is one :func:`prunekit.pipeline.register_stage` call, and recipes, the runner and the
command line all know it.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..core.config import Config, ConfigError
from ..pipeline import STAGES, FinalizeConfig, FinetuneConfig, StageKind, register_stage, stage_dict
from ..pipeline import parse_stage as _parse_any


def parse_stage(data: Mapping[str, Any], where: str | None = None) -> tuple[str, Config]:
    """``(kind, config)`` for one stage of a recipe (``{"stage": "prune", "method": ..., ...}``); a kind that
    does not change the model (load, calibrate, measure, save) belongs to the task, not to the stages; export
    is listed as a stage."""
    kind, cfg = _parse_any(data, where)
    if not (STAGES.get(kind).changes_model or STAGES.get(kind).in_recipes):
        allowed = ", ".join(k for k in STAGES.names() if STAGES.get(k).changes_model or STAGES.get(k).in_recipes)
        msg = f"stage {kind!r} is the task's part in a recipe (task: model, calibration, evaluation); stages: {allowed}"
        raise ConfigError(f"{where + ': ' if where else ''}{msg}", [(("stage",), msg)])
    return kind, cfg


__all__ = ["STAGES", "FinalizeConfig", "FinetuneConfig", "StageKind", "parse_stage", "register_stage", "stage_dict"]
