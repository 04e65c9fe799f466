"""The block-by-block engine: walk a transformer one block at a time.

Capture: on each calibration batch the model runs with every block's ``forward`` replaced by a recorder
that keeps the arguments the model passes it and hands its input back unchanged (the last one stops
the forward, so no LM head runs). Each block therefore gets the arguments the model really builds for
*it* — Gemma 2/3's sliding-window or global masks and rotary tables, rotary ``position_embeddings``
tuples, ALiBi biases, position ids — without any knowledge of the family. Caches are dropped.

Walk: each block is run on its inputs (a method collects statistics and prunes it), and the block's
*pruned* outputs become the next block's inputs, as the Wanda and SparseGPT papers' code does. Only one
block's hidden states (over the calibration windows) live at once. With a ``device`` the model stays
where it is and each block visits the device in turn, so peak device memory is one block's weights
plus ``2 × nsamples × seqlen × hidden`` activations.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .batches import calibration_batches
from .blocks import Blocks, find_blocks


class _Stop(Exception):
    """Raised by the last block's recorder: the rest of the model's forward is not needed."""


@dataclass
class BlockInputs:
    """One batch of a block's inputs: the hidden states plus the other arguments the block is called with."""

    hidden: Tensor
    args: tuple
    kwargs: dict[str, Any]


def _is_cache(x: Any) -> bool:
    return any(c.__name__ == "Cache" for c in type(x).__mro__)


def _clean(x: Any) -> Any:
    """Detached tensors; KV caches replaced by None (every calibration call is a fresh prefill)."""
    if isinstance(x, Tensor):
        return x.detach()
    if _is_cache(x):
        return None
    if isinstance(x, tuple):
        return tuple(_clean(v) for v in x)
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def _to(x: Any, device: torch.device | str) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _split_hidden(args: tuple, kwargs: dict) -> tuple[Tensor, tuple, dict]:
    kwargs = dict(kwargs)
    if args:
        hidden, rest = args[0], tuple(args[1:])
    elif "hidden_states" in kwargs:
        hidden, rest = kwargs.pop("hidden_states"), ()
    else:
        raise ValueError("a transformer block was called without hidden states (no positional argument and no "
                         "hidden_states=); the block-by-block engine cannot walk this model")
    for key in ("past_key_values", "past_key_value", "layer_past", "cache"):
        if key in kwargs:
            kwargs[key] = None
    if kwargs.get("use_cache"):
        kwargs["use_cache"] = False
    for key in ("output_attentions",):
        if kwargs.get(key):
            kwargs[key] = False
    return hidden, _clean(rest), _clean(kwargs)


def _like(template: Any, hidden: Tensor) -> Any:
    """A block output shaped as ``template`` (a tensor or a tuple led by one) carrying ``hidden``."""
    if isinstance(template, tuple):
        return (hidden,) + tuple(template[1:])
    if isinstance(template, list):
        return [hidden] + list(template[1:])
    return hidden


def model_call_options(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments every calibration call adds: ``use_cache=False`` where the model takes it."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _call(model: nn.Module, batch: Any, device: torch.device | str, options: dict[str, Any]) -> None:
    batch = _to(batch, device)
    if isinstance(batch, dict):
        model(**batch, **options)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def capture_inputs(model: nn.Module, blocks: Blocks | nn.ModuleList, batches: list[Any]) -> list[list[BlockInputs]]:
    """Run the model on every batch with each block replaced by a recorder; returns, per batch, the
    inputs of every block (the hidden states only for block 0: later blocks' come from the walk).

    Raises a ValueError when the model changes its hidden states between blocks (the walk could not
    reproduce that) or never reaches its blocks.
    """
    mods = blocks.modules if isinstance(blocks, Blocks) else blocks
    n = len(mods)
    device = next(model.parameters()).device
    options = model_call_options(model)
    per_batch: list[list[BlockInputs]] = []
    template: list[Any] = []
    current: list[BlockInputs] = []
    handed: list[Tensor | None] = [None]

    def recorder(i: int, real: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden, rest, kw = _split_hidden(args, kwargs)
            if i > 0 and handed[0] is not None and not (
                    hidden.shape == handed[0].shape and torch.equal(hidden, handed[0])):
                raise ValueError(
                    f"{type(model).__name__} changes its hidden states between block {i - 1} and block {i}; the "
                    "block-by-block engine only walks models that feed each block's output straight to the next")
            current.append(BlockInputs(hidden.detach() if i == 0 else hidden.new_empty(0), rest, kw))
            if not template:
                template.append(_clean(real(*args, **kwargs)))
            handed[0] = hidden
            if i == n - 1:
                raise _Stop
            return _like(template[0], hidden)
        return forward

    originals = [b.__dict__.get("forward") for b in mods]
    for i, b in enumerate(mods):
        b.forward = recorder(i, b.forward)
    try:
        with torch.no_grad():
            for batch in batches:
                current, handed[0] = [], None
                try:
                    _call(model, batch, device, options)
                except _Stop:
                    pass
                if len(current) != n:
                    raise ValueError(f"{type(model).__name__}'s forward called {len(current)} of its {n} blocks; the "
                                     "block-by-block engine needs every block called once per forward")
                per_batch.append(current)
    finally:
        for b, orig in zip(mods, originals):
            if orig is None:
                del b.forward
            else:
                b.forward = orig
    return per_batch


def run_block(block: nn.Module, inputs: BlockInputs, device: torch.device | str | None = None) -> Tensor:
    """The block's output hidden states for one batch of inputs (on ``device`` when given)."""
    if device is None:
        out = block(inputs.hidden, *inputs.args, **inputs.kwargs)
    else:
        out = block(inputs.hidden.to(device), *_to(inputs.args, device), **_to(inputs.kwargs, device))
    return out[0] if isinstance(out, (tuple, list)) else out


def walk_blocks_(
    model: nn.Module,
    calibration: Any,
    visit: Callable[[int, str, nn.Module, list[BlockInputs]], None],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "blocks",
    propagate: bool = True,
) -> int:
    """Call ``visit(index, name, block, inputs)`` on every transformer block in order; returns the block count.

    ``visit`` may collect statistics (by running the block on ``inputs``) and prune the block; then the
    block is run again on ``inputs`` and its outputs (pruned) are the next block's inputs. With
    ``device`` (e.g. ``"cuda"``) each block is moved there for its turn and back after.
    """
    from tqdm.auto import tqdm

    blocks = find_blocks(model)
    batches = calibration_batches(calibration, batch_size, tokens=True)
    was_training = model.training
    model.eval()
    try:
        calls = capture_inputs(model, blocks, batches)
        states = [c[0] for c in calls]
        home = next(blocks.modules[0].parameters()).device
        for i, block in enumerate(tqdm(blocks.modules, desc=desc, disable=not progress, leave=False)):
            if device is not None:
                block.to(device)
            with torch.no_grad():
                visit(i, blocks.block_name(i), block, states)
                if propagate and i + 1 < len(blocks.modules):
                    states = [BlockInputs(run_block(block, s, device).to(s.hidden.device), c[i + 1].args,
                                          c[i + 1].kwargs) for s, c in zip(states, calls)]
            if device is not None:
                block.to(home)
    finally:
        model.train(was_training)
    return len(blocks.modules)
