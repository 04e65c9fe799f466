"""The block-by-block engine: walk a transformer one block at a time.

The first block's inputs are captured with a forward pre-hook that stops the model's forward; then
each block is run on them (a method collects statistics and prunes it), and the block's *pruned*
outputs become the next block's inputs, as the Wanda and SparseGPT papers' code does. Only one
block's activations (inputs and outputs over the calibration windows) live at once. With a CUDA
``device`` the model stays on the CPU and each block visits the device in turn, so peak device memory
is one block's weights plus ``2 × nsamples × seqlen × hidden`` activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

# model_type → where the blocks live, tried as a suffix of a ModuleList's name.
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("layers",),
    "mistral": ("layers",),
    "qwen2": ("layers",),
    "gpt2": ("h",),
    "opt": ("decoder.layers",),
    "bert": ("encoder.layer",),
}


class _Stop(Exception):
    """Raised by the capture hook to end the model's forward once the first block's inputs are known."""


@dataclass
class BlockInputs:
    """One batch of a block's inputs: the hidden states plus the other arguments the block was called with."""

    hidden: Tensor
    args: tuple
    kwargs: dict[str, Any]


def family_of(model: nn.Module) -> str:
    """The model family (``config.model_type``) when the engine can walk it; else a ValueError naming the supported ones."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ValueError(
            f"the block-by-block engine cannot walk model family {kind!r} ({type(model).__name__}); "
            f"supported: {', '.join(sorted(FAMILIES))}. Use method='magnitude', which needs no calibration"
        )
    return kind


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the ModuleList of the model's transformer blocks."""
    kind = family_of(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == s or name.endswith("." + s) for s in FAMILIES[kind]):
            return name, module
    raise ValueError(f"found no transformer blocks ({' or '.join(FAMILIES[kind])}) in {type(model).__name__}")


def as_batches(calibration: Any, batch_size: int) -> list[dict[str, Tensor]]:
    """Calibration data as model-input dicts of at most ``batch_size`` windows.

    Accepts a LongTensor of token ids ``(nsamples, seqlen)``, a list of such rows or tensors, or a list
    of dicts of model inputs (``input_ids`` and maybe ``attention_mask``).
    """
    if isinstance(calibration, Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"calibration must be integer token ids of shape (nsamples, seqlen); got {calibration.dtype} "
                f"{tuple(calibration.shape)}"
            )
        return [{"input_ids": c} for c in calibration.long().split(batch_size)]
    if isinstance(calibration, (list, tuple)) and calibration:
        if all(isinstance(c, dict) for c in calibration):
            return list(calibration)
        if all(isinstance(c, Tensor) for c in calibration):
            rows = [c if c.dim() == 2 else c.reshape(1, -1) for c in calibration]
            if len({r.shape[1] for r in rows}) == 1:
                return as_batches(torch.cat(rows), batch_size)
            return [{"input_ids": r.long()} for r in rows]
    raise ValueError(
        "calibration must be token ids: a LongTensor (nsamples, seqlen), a list of them, or a list of dicts "
        f"with 'input_ids' (e.g. prunekit.datasets.text.calibration_windows(...)); got {type(calibration).__name__}"
    )


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


def capture_inputs(model: nn.Module, blocks: nn.ModuleList, batches: Iterable[dict[str, Tensor]]) -> list[BlockInputs]:
    """Run the model up to its first block on every batch and return that block's inputs (on the CPU)."""
    captured: list[BlockInputs] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_values", None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append(BlockInputs(hidden.detach(), _detach(rest), _detach(kwargs)))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    extra = {"use_cache": False} if family_of(model) != "bert" else {}
                    model(**_to(batch, device), **extra)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return captured


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


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
    ``device`` (e.g. ``"cuda"``) each block is moved there for its turn and back to the CPU after.
    """
    from tqdm.auto import tqdm

    name, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    try:
        states = capture_inputs(model, blocks, as_batches(calibration, batch_size))
        if not states:
            raise ValueError("calibration holds no window; pass at least one sequence of token ids")
        home = next(blocks[0].parameters()).device
        for i, block in enumerate(tqdm(blocks, desc=desc, disable=not progress, leave=False)):
            if device is not None:
                block.to(device)
            with torch.no_grad():
                visit(i, f"{name}.{i}", block, states)
                if propagate and i + 1 < len(blocks):
                    states = [BlockInputs(run_block(block, s, device).to(s.hidden.device), s.args, s.kwargs)
                              for s in states]
            if device is not None:
                block.to(home)
    finally:
        model.train(was_training)
    return len(blocks)


def forward_all(block: nn.Module, inputs: list[BlockInputs], device: torch.device | str | None = None) -> Iterator[Tensor]:
    """Run ``block`` on every batch of ``inputs`` (for hooks that collect statistics), yielding outputs."""
    for s in inputs:
        yield run_block(block, s, device)
