"""A Hugging Face ``transformers.TrainerCallback`` that drives :class:`prunekit.train.Gradual`.

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[GradualPruningCallback(sparsity=0.8)])

Needs ``transformers`` (the ``llm`` extra); prunekit's core does not.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from .gradual import Gradual, gradual_for


class GradualPruningCallback(TrainerCallback):
    """Gradual magnitude pruning inside ``transformers.Trainer``: the options are :class:`Gradual`'s;
    ``end_step`` defaults to the trainer's ``max_steps`` and ``every`` to a tenth of the window. Pass
    ``model=`` to build (and validate) the schedule at once; else it is built when training begins."""

    def __init__(self, model: nn.Module | None = None, **gradual_options: Any) -> None:
        self.options = gradual_options
        self.gradual: Gradual | None = None
        if model is not None:
            self.gradual = gradual_for(model, None, gradual_options, "GradualPruningCallback")

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.gradual is None:
            if model is None:
                raise ValueError("GradualPruningCallback needs the model: the Trainer passes it, or pass model=")
            self.gradual = gradual_for(model, state.max_steps, self.options, "GradualPruningCallback")
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.gradual.step()
        return control
