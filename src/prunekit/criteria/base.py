"""What every importance criterion shares: its registry entry, the data it may use, and batch helpers.

A criterion maps each target tensor to a score tensor of the same shape; higher means more
important. Entries already pruned are set to ``-inf`` by the caller, so they go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..infra.calling import call_model, output_tensor
from ..core.finite import NonFiniteError, check_finite
from ..core.mask import weight_of
from ..core.registry import Registry
from ..core.scope import Target

ScoreFn = Callable[[nn.Module, list[Target], "ScoreContext"], dict[str, Tensor]]


@dataclass(frozen=True)
class Criterion:
    """A registered importance score; ``needs_data`` criteria need a data loader and a loss function."""

    name: str
    fn: ScoreFn
    needs_data: bool = False
    needs_inputs: bool = False


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, needs_data: bool = False, needs_inputs: bool = False):
    """Decorator registering a score function as criterion ``name``."""

    def deco(fn: ScoreFn) -> ScoreFn:
        CRITERIA.add(name, Criterion(name, fn, needs_data, needs_inputs))
        return fn

    return deco


@dataclass
class ScoreContext:
    """What a criterion may use: batches of data, a loss, example inputs, a seed, and the method's typed
    config (criteria with settings of their own read them from it: GraSP's ``temperature``)."""

    data: Iterable[Any] | None = None
    loss_fn: Callable[..., Tensor] | None = None
    example_inputs: Any = None
    seed: int = 0
    max_batches: int | None = None
    config: Any = None

    def batches(self) -> Iterable[Any]:
        """The data's batches, at most ``max_batches`` of them; an empty batch is an error."""
        for i, batch in enumerate(self.data):
            if self.max_batches is not None and i >= self.max_batches:
                break
            check_batch(batch, i)
            yield batch


def _first_dim(x: Any) -> int | None:
    if isinstance(x, Tensor):
        return x.shape[0] if x.dim() else None
    if isinstance(x, Mapping):
        x = next((v for v in x.values() if isinstance(v, Tensor)), None)
        return _first_dim(x) if x is not None else None
    if isinstance(x, (tuple, list)) and x:
        return _first_dim(x[0])
    return None


def check_batch(batch: Any, index: int) -> None:
    """Refuse an empty batch (no examples): it would give zero or NaN scores, not an error."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    if _first_dim(inputs) == 0:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else "empty"
        raise ValueError(f"data batch {index} holds no examples (inputs of shape {shape}); every batch needs at "
                         "least one: drop empty batches (e.g. DataLoader(..., drop_last=True))")


def check_loss(loss: Tensor, index: int) -> None:
    """Refuse a NaN or infinite loss: its gradients would make every score meaningless."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteError(f"data batch {index} gives a loss of {float(loss.detach().float().sum())}: the batch "
                             "(inputs or targets) or the model's weights hold NaN/inf, or the loss overflows. "
                             "Nothing was pruned")


def score_targets(criterion: Criterion, model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Run ``criterion`` on ``targets`` and check that every score is finite, naming the criterion and the
    layer when one is not (a NaN or inf would otherwise rank weights by their index)."""
    scores = criterion.fn(model, targets, ctx)
    hint = ("check the data batches, the loss and the weights for NaN/inf" if criterion.needs_data
            else "check the weights (and example inputs) for NaN/inf")
    for t in targets:
        check_finite(scores[t.name], f"{criterion.name} scores", t.name, hint)
    return scores


def batch_loss(model: nn.Module, batch: Any, loss_fn: Callable[..., Tensor] | None, temperature: float = 1.0) -> Tensor:
    """Loss of ``model`` on one batch: ``(inputs, targets)`` with ``loss_fn(outputs, targets)``, or a
    dict of keyword inputs whose output carries ``.loss`` (Hugging Face models given labels)."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        if loss_fn is None:
            if getattr(out, "loss", None) is None:
                raise ValueError("a dict batch without a loss_fn needs a model output with .loss (pass labels)")
            return out.loss
        return loss_fn(output_tensor(out) / temperature, batch.get("labels"))
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("each batch must be (inputs, targets) or a dict of model inputs")
    if loss_fn is None:
        raise ValueError("a loss function is needed for (inputs, targets) batches: pass loss_fn=")
    inputs, targets = batch
    return loss_fn(output_tensor(call_model(model, inputs)) / temperature, targets)


def leaves(targets: list[Target]) -> list[Tensor]:
    """The leaf parameters (dense weights) of the targets."""
    return [weight_of(t.module, t.param) for t in targets]


def effective(target: Target) -> Tensor:
    """The weight forward sees (masked, if the tensor carries a mask)."""
    return getattr(target.module, target.param).detach()


class eval_mode:
    """Context manager: run the model in eval mode (no BatchNorm updates, no dropout), then restore."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.train(mode)


def accumulate_grads(model: nn.Module, targets: list[Target], ctx: ScoreContext,
                     each: Callable[[list[Tensor], list[Tensor]], None], temperature: float = 1.0) -> int:
    """For every batch, compute d(loss)/d(weight) of the targets and call ``each(grads, weights)``.

    Uses ``torch.autograd.grad`` so the model's own ``.grad`` fields are left untouched. Returns the
    number of batches seen.
    """
    params = leaves(targets)
    n = 0
    with eval_mode(model), torch.enable_grad():
        for batch in ctx.batches():
            loss = batch_loss(model, batch, ctx.loss_fn, temperature)
            check_loss(loss, n)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            each(list(grads), [effective(t) for t in targets])
            n += 1
    if n == 0:
        raise ValueError("the data loader yielded no batch; a data-driven criterion needs at least one")
    return n
