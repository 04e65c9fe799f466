"""One pass per block, every layer pruned on the inputs it really gets ("true sequential"): the engines.

The usual block-by-block loop runs each block twice: once dense, to collect every layer's input
statistics, and once pruned, to feed the next block. Here the block runs **once** over the
calibration windows, and each target layer is pruned inside its own forward pre-hook, from the inputs
it receives in that very pass: q/k/v see the block's input, o_proj sees
the attention computed with the already-pruned q/k/v, down_proj sees the pruned gate/up, and so on.
The block's output is then the pruned block's output, which feeds the next block. One forward per
block instead of two, and each layer compensates for the error of the layers before it (GPTQ's
``--true-sequential``; SparseGPT's weight updates then reconstruct what the pruned block really sees).
Statistics are :class:`~.stats.InputStats`, fed through ``record`` (the one arithmetic; Gram matrices
block-triangular, :func:`~.stats.add_upper_gram_`).

The pass calls the block on one batch of ``batch_size`` windows at a time, the calls in lockstep
(:class:`~.lockstep.Lockstep`): each batch's call pauses at a target's pre-hook until every batch has
reached it (its statistics then cover all windows) and it is pruned, then all go on. The tensors alive at
a pause (a few per window, e.g. down_proj's input) add up over the batches; the block's transient ones
(attention, the MLP's other intermediates) exist for one batch at a time. During the pass, allocations of
1 MB or more are memory maps of their own (:func:`~prunekit.infra.machine.large_allocations_mapped`):
batch-sized tensors freed in another order than taken would otherwise stay in the C heap as holes. Fresh
maps cost page faults and what a call holds at a pause is held for every window, so Llama-style blocks run
leaner during the pass (:mod:`.lean_blocks`: the MLP's activation and product, the norms, the rotary embedding
and the residual sums in place, the layer's input and its MLP's input freed once read for the last time; the same
numbers).

:func:`one_pass_bytes` estimates the pass's activation memory before anything runs (as if all windows ran
in one call: an upper bound); when it exceeds the budget (half of the memory available where the blocks
run, by default), or when the windows differ in length, the same computation runs in **staged** passes of ``batch_size`` windows (:func:`walk_staged_`): for
each group of layers that read one input (q/k/v, then o, then gate/up, then down), the block runs over
the batches up to that group, the group is pruned, and the next group is reached on the pruned ones.
The result is the one-pass result (up to the order of float sums); it costs about two extra forwards
per block, but memory stays at ``batch_size`` windows.

The engines know no method: a caller gives, per block, the targets (``targets_of(block_name)``), what
to do with one target and its statistics (``prune(target, stats)``), and what to do with targets the
forward never called (``uncalled(targets, block_name)``); ``prunekit.methods.layerwise`` is that caller.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..core.scope import Target
from ..infra.machine import large_allocations_mapped, release_freed_memory
from .batches import calibration_batches
from .blockwise import BlockInputs, run_block, walk_blocks_
from .lean_blocks import lean_blocks
from .lockstep import Lockstep
from .stats import InputStats

Prune = Callable[[Target, InputStats], None]
Uncalled = Callable[[list[Target], str], None]


class _StopBlock(Exception):
    """Ends a block call once the layers of the current stage have seen their inputs."""


def one_pass_possible(calibration: Any) -> bool:
    """Whether the calibration windows fit one block call (all of the same length)."""
    batches = calibration_batches(calibration, 1 << 30, tokens=True)
    return len(batches) == 1


def one_pass_bytes(model: nn.Module, calibration: Any) -> int:
    """An upper estimate of the activation memory of one block called on every calibration window at once:
    the MLP's and attention's intermediate tensors, the float32 copies the statistics take, and the
    attention scores (float32), over all calibration tokens."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    get = lambda *names, default=0: next((int(getattr(cfg, n)) for n in names  # noqa: E731
                                          if getattr(cfg, n, None) is not None), default)
    hidden = get("hidden_size", "n_embd", "d_model", default=1024)
    inner = get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
    heads = get("num_attention_heads", "n_head", default=1)
    kv = get("num_key_value_heads", default=heads)
    head_dim = get("head_dim", default=hidden // max(heads, 1))
    batches = calibration_batches(calibration, 1 << 30, tokens=True)
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    windows = sum(int(b["input_ids"].shape[0]) if b["input_ids"].dim() == 2 else 1 for b in batches)
    seqlen = max(int(b["input_ids"].shape[-1]) for b in batches)
    per_token = 4 * inner + 6 * hidden + (heads + 2 * kv) * head_dim
    return 4 * tokens * per_token + 8 * windows * heads * seqlen * seqlen


def memory_budget(device: Any = None) -> int:
    """Half of the memory available where the blocks run: the CUDA device's free memory, else the host's."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free // 2
    import psutil

    return psutil.virtual_memory().available // 2


def walk_one_pass_(model: nn.Module, calibration: Any, targets_of: Callable[[str], list[Target]], prune: Prune,
                   uncalled: Uncalled, *, hessian: bool, batch_size: int | None = None, device: Any = None,
                   progress: bool = True, desc: str = "one pass") -> None:
    """Walk the blocks, one forward per block over every calibration window; each target of
    ``targets_of(block_name)`` is handed to ``prune(target, stats)`` just before it runs, its statistics
    taken on its real (partly pruned) inputs over all windows. Targets the forward never called go to
    ``uncalled``.

    With ``batch_size`` (windows per block call) the block is called on one batch at a time, the calls
    in lockstep (:class:`~.lockstep.Lockstep`): every batch's call pauses at a target until all batches
    have reached it and it is pruned. The same computation (up to the order of float sums inside each
    product), with the block's transient activations held for one batch instead of all windows."""
    n_windows = sum(b["input_ids"].shape[0] for b in calibration_batches(calibration, 1 << 30, tokens=True))
    batch_size = n_windows if batch_size is None else min(batch_size, n_windows)
    step = Lockstep()

    def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
        targets = targets_of(block_name)
        stats = InputStats(hessian=hessian)
        done: set[str] = set()
        by_name = {t.name: t for t in targets}

        def pause_hook(t):
            def hook(module: nn.Module, args: tuple) -> None:
                if t.name in done:  # a module called twice in one forward is pruned once, on its first input
                    return
                stats.record(t.name, args[0])
                step.pause(t.name)
            return hook

        def act(name: str) -> None:
            done.add(name)
            prune(by_name[name], stats)

        handles = [t.module.register_forward_pre_hook(pause_hook(t)) for t in targets]
        try:
            with lean_blocks(block):  # Llama-style: MLP in place, dead inputs freed; the same numbers
                out = step.run([lambda s=s: run_block(block, s, device) for s in inputs], act)
        finally:
            for h in handles:
                h.remove()
        missing = [t for t in targets if t.name not in done]
        if missing:
            uncalled(missing, block_name)
        for s, o in zip(inputs, out):  # the pruned outputs become the next block's inputs
            s.hidden = o.to(s.hidden.device)

    # what the process freed before the walk (loading's buffers: ~40 MB for SmolLM2) goes back to the system
    # rather than sitting under the walk's peak
    release_freed_memory()
    with large_allocations_mapped():  # the batches' tensors, freed in another order than taken, leave no holes
        walk_blocks_(model, calibration, visit, progress=progress, desc=desc, propagate=False, batch_size=batch_size,
                     device=device)


def walk_staged_(model: nn.Module, calibration: Any, targets_of: Callable[[str], list[Target]], prune: Prune,
                 uncalled: Uncalled, *, hessian: bool, batch_size: int = 8, device: Any = None,
                 progress: bool = True, desc: str = "staged") -> None:
    """The one-pass computation with memory bounded to ``batch_size`` windows: per block, stage after stage,
    run the block over the batches until the next group of not-yet-pruned targets that read one input has
    seen it (then stop the call), accumulate that group's statistics, hand each to ``prune(target, stats)``."""

    def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
        pending = list(targets_of(block_name))
        while pending:
            stats = InputStats(hessian=hessian)
            group: list[str] = []

            def stage_hook(t):
                def hook(module: nn.Module, args: tuple) -> None:
                    x = args[0]
                    if call["first"] is None and (not group or t.name in group):
                        call["first"] = x
                    elif x is not call["first"] or (group and t.name not in group) or t.name in call["seen"]:
                        raise _StopBlock
                    call["seen"].add(t.name)
                    stats.record(t.name, x)
                return hook

            handles = [t.module.register_forward_pre_hook(stage_hook(t)) for t in pending]
            try:
                for s in inputs:
                    call = {"first": None, "seen": set()}
                    stats.new_call()
                    try:
                        run_block(block, s, device)
                    except _StopBlock:
                        pass
                    if not group:
                        group = [t.name for t in pending if t.name in call["seen"]]
                        if not group:
                            break
            finally:
                for h in handles:
                    h.remove()
            if not group:  # the rest are never called: no activations to prune them by
                uncalled(pending, block_name)
                break
            for t in [t for t in pending if t.name in group]:
                prune(t, stats)
            pending = [t for t in pending if t.name not in group]

    walk_blocks_(model, calibration, visit, progress=progress, desc=desc, batch_size=batch_size, device=device)
