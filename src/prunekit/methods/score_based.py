"""Score-based pruning: criterion → allocation → pattern → mask. Magnitude, random, SNIP, GraSP,
SynFlow, Taylor and LRP pruning are this one method with a different criterion; their configs live here."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core.allocate import allocate
from ..core.finite import check_finite
from ..core.mask import get_mask, set_mask_
from ..core.pattern import allocation_view, mask_from_scores
from ..criteria.base import CRITERIA, Criterion, score_targets
from .base import PruneLog, PrunePlan, register_method
from .config import PruneConfig


class MagnitudeConfig(PruneConfig):
    """Magnitude pruning: |W|."""

    method: Literal["magnitude"] = "magnitude"


class RandomConfig(PruneConfig):
    """Random pruning (seeded)."""

    method: Literal["random"] = "random"


class SnipConfig(PruneConfig):
    """SNIP (Lee et al., 2019): |g ⊙ W| on data."""

    method: Literal["snip"] = "snip"


class TaylorConfig(PruneConfig):
    """First-order Taylor importance (Molchanov et al., 2019): (g ⊙ W)² on data."""

    method: Literal["taylor"] = "taylor"


class GraspConfig(PruneConfig):
    """GraSP (Wang et al., 2020): −W ⊙ Hg on data, with a softmax temperature."""

    method: Literal["grasp"] = "grasp"
    temperature: float = Field(200.0, gt=0)


class SynflowConfig(PruneConfig):
    """SynFlow (Tanaka et al., 2020): data-free synaptic flow; the paper prunes in ``iterations=100`` rounds."""

    method: Literal["synflow"] = "synflow"


class LrpConfig(PruneConfig):
    """Pruning by Explaining (Yeom et al., 2021): LRP relevance of each weight for the true class, on data."""

    method: Literal["lrp"] = "lrp"
    rule: Literal["epsilon", "zplus", "composite"] = "composite"
    epsilon: float = Field(1e-6, gt=0)


class ScoreMethod:
    """Prune the lowest-scoring weights under ``criterion``, spread over layers by the plan's allocation."""

    prunes_experts = False

    def __init__(self, criterion: str) -> None:
        self.name = criterion
        self.criterion: Criterion = CRITERIA.get(criterion)

    def validate(self, model: nn.Module, plan: PrunePlan) -> None:
        ctx = plan.context
        if self.criterion.needs_data and (ctx.data is None):
            raise ValueError(
                f"criterion {self.name!r} needs data: pass data= (an iterable of (inputs, targets) batches) "
                "and loss_fn= (e.g. torch.nn.functional.cross_entropy)"
            )
        if self.criterion.needs_inputs and ctx.example_inputs is None:
            raise ValueError(f"criterion {self.name!r} needs example_inputs= (one batch of model inputs)")
        for t in plan.targets:
            check_finite(getattr(t.module, t.param).detach(), "weights", t.name,
                         f"the model holds NaN/inf weights before pruning with {self.name}; reload it or find "
                         "where they came from")

    def scores(self, model: nn.Module, plan: PrunePlan) -> dict[str, Tensor]:
        """Criterion scores (checked finite) with already-pruned entries set to -inf."""
        scores = score_targets(self.criterion, model, list(plan.targets), plan.context)
        for t in plan.targets:
            old = get_mask(t.module)
            if old is not None:
                scores[t.name] = scores[t.name].masked_fill(~old.cpu(), -math.inf)
        return scores

    def masks(self, model: nn.Module, plan: PrunePlan, sparsity: float) -> dict[str, Tensor]:
        """The keep-mask of every target at ``sparsity`` (changes nothing)."""
        scores = self.scores(model, plan)
        if plan.pattern.kind == "nm":
            counts = {name: 0 for name in scores}
        else:
            ranked = {t.name: allocation_view(scores[t.name].t() if t.transposed else scores[t.name], plan.pattern)
                      for t in plan.targets}
            counts = allocate(ranked, sparsity, plan.allocation, **plan.allocation_options)
        out = {}
        for t in plan.targets:
            if t.transposed:  # patterns run on (out, in); Conv1D stores (in, out)
                keep = mask_from_scores(scores[t.name].t(), plan.pattern, counts[t.name]).t()
            else:
                keep = mask_from_scores(scores[t.name], plan.pattern, counts[t.name])
            old = get_mask(t.module)
            out[t.name] = keep if old is None else keep & old.cpu()
        return out

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Compute every mask first, then put them all on the model."""
        masks = self.masks(model, plan, sparsity)
        with torch.no_grad():
            for t in plan.targets:
                set_mask_(t.module, masks[t.name])


for _config in (MagnitudeConfig, RandomConfig, SnipConfig, GraspConfig, SynflowConfig, TaylorConfig, LrpConfig):
    _name = _config.model_fields["method"].default
    register_method(_name, _config)(partial(ScoreMethod, _name))
