"""Score-based pruning: criterion → allocation → pattern → mask. Magnitude, random, SNIP, GraSP,
SynFlow and Taylor pruning are this one method with a different criterion."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..core.allocate import allocate
from ..core.finite import check_finite
from ..core.mask import get_mask
from ..core.pattern import allocation_view, mask_from_scores
from ..criteria.base import CRITERIA, Criterion, score_targets
from .base import METHODS, PrunePlan
from .config import METHOD_CONFIGS


class ScoreMethod:
    """Prune the lowest-scoring weights under ``criterion``, spread over layers by the plan's allocation."""

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
        scores = score_targets(self.criterion, model, plan.targets, plan.context)
        for t in plan.targets:
            old = get_mask(t.module)
            if old is not None:
                scores[t.name] = scores[t.name].masked_fill(~old.cpu(), -math.inf)
        return scores

    def masks(self, model: nn.Module, plan: PrunePlan) -> dict[str, Tensor]:
        scores = self.scores(model, plan)
        if plan.pattern.kind == "nm":
            counts = {name: 0 for name in scores}
        else:
            ranked = {t.name: allocation_view(scores[t.name].t() if t.transposed else scores[t.name], plan.pattern)
                      for t in plan.targets}
            counts = allocate(ranked, plan.sparsity, plan.allocation, **plan.allocation_options)
        out = {}
        for t in plan.targets:
            if t.transposed:  # patterns run on (out, in); Conv1D stores (in, out)
                keep = mask_from_scores(scores[t.name].t(), plan.pattern, counts[t.name]).t()
            else:
                keep = mask_from_scores(scores[t.name], plan.pattern, counts[t.name])
            old = get_mask(t.module)
            out[t.name] = keep if old is None else keep & old.cpu()
        return out


for _criterion in ("magnitude", "random", "snip", "grasp", "synflow", "taylor"):
    METHODS.add(_criterion, (lambda c=_criterion: ScoreMethod(c)), METHOD_CONFIGS[_criterion])
