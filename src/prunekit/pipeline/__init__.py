"""One pipeline: the command line, recipes and benchmarks run the same typed stages.

A stage kind (:class:`StageKind`, registered in :data:`STAGES`) holds its typed config, its checks and its
run: ``load``, ``calibrate``, ``measure``, ``save`` frame a language model's pruning; ``prune`` (masks:
unstructured, N:M, any registered method), ``structured``, ``slice``, ``experts``, ``loraprune`` (MLP neurons
removed while LoRA trains), ``recover``,
``finetune``, ``finalize``, ``tokens`` (a token patch) and ``shrink`` (a smaller dense shape under a budget,
optionally distilled) change the model; ``data`` scores and selects
training examples (the finetune after it trains on them); ``export`` writes it where users run it (GGUF, compressed
or safetensors); ``engine`` measures that GGUF file in llama.cpp (speed, perplexity) into the run's figures.
:func:`run_stages` runs a list of ``(kind, config)``
pairs on a :class:`Workspace`, every stage's check before anything is measured or changed.

    from prunekit.pipeline import Workspace, parse_stage, run_stages
    stages = [parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5}),
              parse_stage({"stage": "finalize"})]
    run_stages(stages, Workspace(model=model))
"""

from . import data, engine, export, lm, loraprune, shrink, stages  # noqa: F401  (register the stage kinds)
from .base import (STAGES, Stage, StageKind, StageResult, Workspace, check_stages, parse_stage, register_stage,
                   run_stages, stage_dict)
from .lm import CalibrateConfig, LoadConfig, MeasureConfig, SaveConfig, save_pruned
from .data import DataConfig
from .engine import EngineConfig
from .shrink import ShrinkConfig, ShrinkDistillConfig
from .stages import FinalizeConfig, FinetuneConfig

__all__ = ["STAGES", "CalibrateConfig", "DataConfig", "EngineConfig", "FinalizeConfig", "FinetuneConfig", "LoadConfig", "MeasureConfig",
           "SaveConfig", "ShrinkConfig", "ShrinkDistillConfig", "Stage", "StageKind", "StageResult", "Workspace", "check_stages", "parse_stage",
           "register_stage", "run_stages", "save_pruned", "stage_dict"]
