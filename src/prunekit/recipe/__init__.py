"""Recipes: typed, serialisable descriptions of pruning experiments (``prunekit run recipe.yaml``)."""

from .schema import ClassifyTask, LMTask, Recipe, RunSpec, TextCalibration, TextEvaluation
from .stages import STAGES, FinalizeConfig, FinetuneConfig, parse_stage, register_stage, stage_dict

__all__ = ["STAGES", "ClassifyTask", "FinalizeConfig", "FinetuneConfig", "LMTask", "Recipe", "RunSpec",
           "TextCalibration", "TextEvaluation", "parse_stage", "register_stage", "stage_dict"]
