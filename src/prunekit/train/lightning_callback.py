"""A PyTorch Lightning ``Callback`` that drives :class:`prunekit.train.Gradual`.

    trainer = lightning.Trainer(max_epochs=3, callbacks=[LightningGradualPruning(sparsity=0.8)])

Needs ``lightning`` (or the older ``pytorch_lightning``); prunekit's core does not.
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    from pytorch_lightning import Callback

from .gradual import Gradual, gradual_for


class LightningGradualPruning(Callback):
    """Gradual magnitude pruning inside a Lightning ``Trainer``: the options are :class:`Gradual`'s;
    ``end_step`` defaults to the trainer's estimated number of optimizer steps. The schedule's state
    (step count, history, masks) is saved in and restored from Lightning checkpoints."""

    def __init__(self, **gradual_options: Any) -> None:
        self.options = gradual_options
        self.gradual: Gradual | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":  # fail before any training when the module has nothing to prune (changes nothing)
            gradual_for(pl_module, 1 << 30, self.options, "LightningGradualPruning")

    def on_fit_start(self, trainer, pl_module) -> None:
        self.gradual = gradual_for(pl_module, int(trainer.estimated_stepping_batches), self.options,
                                   "LightningGradualPruning")
        if self._pending is not None:
            self.gradual.load_state_dict(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.gradual.step()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.gradual is None else self.gradual.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.gradual is not None:
            self.gradual.load_state_dict(state_dict)
        else:
            self._pending = state_dict
