"""Layer pruning at initialization: "When Layers Play the Lottery, all Tickets Win at Initialization"
(Jordao et al., 2023).

Before any training, score every removable block (a residual block whose output has its input's shape, so an
identity can stand in for it) by a pruning-at-initialization criterion summed over the block's weights (the
paper uses data-driven criteria such as GraSP; any registered criterion works: ``grasp``, ``snip``,
``synflow``, ``magnitude``), and replace the lowest-scoring blocks with ``nn.Identity``. The shallower network is
then trained from its initialization: the paper's winning ticket.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..core.scope import Scope, select_targets
from ..criteria.base import CRITERIA, ScoreContext, score_targets
from ..infra.calling import call_model


@dataclass
class LayerLotteryReport:
    """Which blocks were removed, every candidate's score, and the parameter counts before and after."""

    criterion: str
    removed: list[str]
    scores: dict[str, float]
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"layer lottery ({self.criterion}): removed {len(self.removed)} of {len(self.scores)} blocks "
                f"({', '.join(self.removed) or 'none'}); params {self.params_before:,} -> {self.params_after:,}")


def removable_blocks(model: nn.Module, example_inputs: Any) -> list[str]:
    """Modules holding a residual connection whose output has the shape of their input (an identity can replace
    them): children of ``nn.Sequential`` containers that hold a weight layer, found on one forward pass."""
    shapes: dict[str, tuple] = {}
    candidates = {}
    for name, seq in model.named_modules():
        if isinstance(seq, nn.Sequential):
            for child_name, child in seq.named_children():
                if any(isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) for m in child.modules()) and \
                        not isinstance(child, (nn.Linear, nn.modules.conv._ConvNd)):
                    candidates[f"{name}.{child_name}" if name else child_name] = child

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, args: tuple, out: Any) -> None:
            if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
                shapes[name] = (tuple(args[0].shape), tuple(out.shape))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in candidates.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [n for n in candidates if n in shapes and shapes[n][0] == shapes[n][1]]


def block_scores(model: nn.Module, blocks: list[str], criterion: str = "grasp", *, data: Any = None,
                 loss_fn: Callable | None = None, example_inputs: Any = None, config: Any = None) -> dict[str, float]:
    """Each block's score: ``criterion`` summed over the Linear/Conv weights inside it (higher = keep)."""
    crit = CRITERIA.get(criterion)
    if crit.needs_data and data is None:
        raise ValueError(f"criterion {criterion!r} needs data= (batches of (inputs, targets)) and loss_fn=")
    if crit.needs_inputs and example_inputs is None:
        raise ValueError(f"criterion {criterion!r} needs example_inputs=")
    include = [f"{b}.*" for b in blocks]
    targets = select_targets(model, Scope(include=include, skip_first_conv=False, skip_output=False))
    if config is None and criterion == "grasp":
        from ..methods.score_based import GraspConfig  # the temperature's one default

        config = GraspConfig()
    scores = score_targets(crit, model, targets, ScoreContext(data=data, loss_fn=loss_fn,
                                                               example_inputs=example_inputs, config=config))
    out = {b: 0.0 for b in blocks}
    for t in targets:
        owner = max((b for b in blocks if t.name.startswith(b + ".")), key=len)
        out[owner] += float(scores[t.name].double().sum())
    return out


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def prune_layers_at_init_(model: nn.Module, example_inputs: Any, remove: int, criterion: str = "grasp", *,
                          data: Any = None, loss_fn: Callable | None = None, blocks: list[str] | None = None,
                          config: Any = None) -> LayerLotteryReport:
    """Replace the ``remove`` lowest-scoring removable blocks of ``model`` by identities, in place."""
    found = removable_blocks(model, example_inputs) if blocks is None else list(blocks)
    if blocks is not None:
        allowed = set(removable_blocks(model, example_inputs))
        bad = [b for b in blocks if b not in allowed]
        if bad:
            raise ValueError(f"{', '.join(bad)} cannot be replaced by an identity (not a block of a Sequential whose "
                             f"output has its input's shape); removable: {', '.join(sorted(allowed)) or 'none'}")
    if not isinstance(remove, int) or isinstance(remove, bool) or not 0 <= remove <= len(found):
        raise ValueError(f"remove must be a whole number of blocks in [0, {len(found)}] (the removable ones: "
                         f"{', '.join(found) or 'none'}); got {remove!r}")
    before = sum(p.numel() for p in model.parameters())
    scores = block_scores(model, found, criterion, data=data, loss_fn=loss_fn, example_inputs=example_inputs,
                          config=config) if found else {}
    gone = sorted(found, key=lambda b: (scores[b], found.index(b)))[:remove]
    for b in gone:
        _set_module(model, b, nn.Identity())
    after = sum(p.numel() for p in model.parameters())
    notes = [] if remove else ["remove=0: nothing was removed"]
    return LayerLotteryReport(criterion, gone, scores, before, after, notes)
