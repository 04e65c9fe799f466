"""One pass per block, every layer pruned on the inputs it really gets ("true sequential").

The usual block-by-block loop runs each block twice: once dense, to collect every layer's input
statistics, and once pruned, to feed the next block. Here the block runs **once** over all the
calibration windows in a single call, and each target layer is pruned inside its own forward
pre-hook, from the inputs it receives in that very call: q/k/v see the block's input, o_proj sees
the attention computed with the already-pruned q/k/v, down_proj sees the pruned gate/up, and so on.
The block's output is then the pruned block's output, which feeds the next block. One forward per
block instead of two, and each layer compensates for the error of the layers before it (GPTQ's
``--true-sequential``; SparseGPT's weight updates then reconstruct what the pruned block really sees).
The Gram matrices XᵀX are computed block-triangularly (:func:`symmetric_gram`, about 2/3 of the work).

It needs all windows in one block call (memory: one block's activations over the whole calibration
set); with windows of different lengths it falls back to the two-pass loop.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..calibrate import walk_blocks_
from ..calibrate.batches import calibration_batches
from ..calibrate.blockwise import BlockInputs, run_block
from .base import PrunePlan
from .layerwise import ENGINE_OPTIONS, block_targets


def symmetric_gram(x: Tensor, pieces: int = 4) -> Tensor:
    """xᵀx for a (tokens, d) matrix, computing only the blocks on and above the diagonal (about 2/3 of the
    work of one product for 4 pieces) and mirroring the rest; exact."""
    d = x.shape[1]
    if d < 256:
        return x.t() @ x
    bounds = [round(i * d / pieces) for i in range(pieces + 1)]
    cols = [x[:, bounds[i]:bounds[i + 1]].contiguous() for i in range(pieces)]
    out = x.new_empty(d, d)
    for i in range(pieces):
        for j in range(i, pieces):
            blk = cols[i].t() @ cols[j]
            out[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]] = blk
            if i != j:
                out[bounds[j]:bounds[j + 1], bounds[i]:bounds[i + 1]] = blk.t()
    return out


class OnePassStats:
    """Input statistics of the layers of one block, taken as each layer is called (the same interface the
    methods read from :class:`prunekit.calibrate.InputStats`): layers fed the very same tensor share them."""

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self.owner: dict[str, str] = {}
        self.sq_norms: dict[str, Tensor] = {}
        self.grams: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._by_input: dict[int, tuple[Tensor, str]] = {}

    def add(self, name: str, x: Tensor) -> None:
        """Record the input ``x`` of layer ``name`` (computed once per distinct tensor)."""
        seen = self._by_input.get(id(x))
        if seen is not None and seen[0] is x:
            self.owner[name] = seen[1]
            return
        self._by_input[id(x)] = (x, name)
        self.owner[name] = name
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        self.sq_norms[name] = flat.square().sum(0)
        self.tokens[name] = flat.shape[0]
        if self.hessian:
            self.grams[name] = symmetric_gram(flat)

    def seen(self, name: str) -> bool:
        return name in self.owner

    def col_norms(self, name: str) -> Tensor:
        return self.sq_norms[self.owner[name]].sqrt()

    def gram(self, name: str) -> Tensor:
        return self.grams[self.owner[name]]

    def n_tokens(self, name: str) -> int:
        return self.tokens[self.owner[name]]


def one_pass_possible(plan: PrunePlan) -> bool:
    """Whether the calibration windows fit one block call (all of the same length)."""
    batches = calibration_batches(plan.calibration, 1 << 30, tokens=True)
    return len(batches) == 1


def apply_one_pass_(method: Any, model: nn.Module, plan: PrunePlan) -> None:
    """Prune ``model`` block by block with ``method`` (a BlockwiseMethod), one forward per block, each target
    pruned just before it runs on its real (partly pruned) inputs."""
    from ..calibrate import find_blocks

    blocks = find_blocks(model)
    inside = [t for t in plan.targets if blocks.contains(t.name)]
    outside = [t.name for t in plan.targets if t not in inside]
    for name in outside:
        plan.skipped[name] = f"outside the transformer blocks ({blocks.name}.*): {method.name} prunes blocks only"
    if outside:
        warnings.warn(f"{method.name} prunes the transformer blocks only; left dense: {', '.join(outside)}",
                      stacklevel=3)
    sparsities = method.layer_sparsities(model, plan, inside)
    engine = {k: plan.options[k] for k in ENGINE_OPTIONS if k in plan.options}
    device = engine.get("device")
    journal = plan.journal
    n_windows = calibration_batches(plan.calibration, 1 << 30, tokens=True)[0]["input_ids"].shape[0]

    def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
        targets = block_targets(plan, block_name)
        if targets:
            begin = getattr(method, "begin_block", None)
            if begin is not None:
                begin()
            stats = OnePassStats(method.hessian)
            done: set[str] = set()

            def prune_hook(t):
                def hook(module: nn.Module, args: tuple) -> None:
                    if t.name in done:  # a module called twice in one forward is pruned once
                        return
                    done.add(t.name)
                    stats.add(t.name, args[0])
                    if journal is not None and method.updates_weights:
                        journal.record(module)
                    method.prune_layer(t.name, module, stats, sparsities[t.name], plan)
                return hook

            handles = [t.module.register_forward_pre_hook(prune_hook(t)) for t in targets]
            try:
                out = [run_block(block, s, device) for s in inputs]
            finally:
                for h in handles:
                    h.remove()
            missing = [t.name for t in targets if t.name not in done]
            if missing:
                raise RuntimeError(f"{block_name}: the forward never called {', '.join(missing)}")
        else:
            out = [run_block(block, s, device) for s in inputs]
        for s, o in zip(inputs, out):  # the pruned outputs become the next block's inputs
            s.hidden = o.to(s.hidden.device)

    walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=f"{method.name} (one pass)",
                 propagate=False, **{**engine, "batch_size": n_windows})
