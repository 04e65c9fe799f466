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

It needs all windows in one block call: one block's activations over the whole calibration set.
:func:`one_pass_bytes` estimates that memory before anything runs; when it exceeds the budget
(``one_pass_max_gb``, by default half of the memory available where the blocks run), or when the
windows differ in length, the same computation runs in **staged** passes of ``batch_size`` windows
(:func:`apply_staged_`): for each group of layers that read one input (q/k/v, then o, then gate/up,
then down), the block runs over the batches up to that group, the group is pruned, and the next
group is reached on the pruned ones. The result is the one-pass result (up to the order of float
sums); it costs about two extra forwards per block, but memory stays at ``batch_size`` windows.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ..calibrate import walk_blocks_
from ..calibrate.batches import calibration_batches
from ..calibrate.blockwise import BlockInputs, run_block
from ..core.scope import Target
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


STATS_CHUNK_TOKENS = 4096


def row_chunks(x: Tensor, tokens: int = STATS_CHUNK_TOKENS):
    """The rows of ``x`` (…, d) as float32 (n, d) pieces of at most about ``tokens`` rows, in order, without a
    float copy of the whole of ``x``: a contiguous float32 ``x`` is only viewed, any other is copied one piece
    at a time (slices along its first dimension)."""
    x = x.detach()
    d = x.shape[-1]
    if x.dim() < 2 or x.is_contiguous():
        flat = x.reshape(-1, d)
        for i in range(0, flat.shape[0], tokens):
            yield flat[i:i + tokens].float()
        return
    per = max(1, x[0].numel() // d)  # rows in one slice along the first dimension
    step = max(1, tokens // per)
    for i in range(0, x.shape[0], step):
        yield x[i:i + step].reshape(-1, d).float()


def input_sums(x: Tensor, hessian: bool) -> tuple[Tensor, Tensor | None, int]:
    """(Σ x², Σ x·xᵀ or None, rows) over the rows of ``x`` (…, d), in float32, summed over pieces of
    :data:`STATS_CHUNK_TOKENS` rows so that no full-size copy or square of ``x`` is ever made."""
    sq: Tensor | None = None
    gram: Tensor | None = None
    rows = 0
    for c in row_chunks(x):
        s = c.square().sum(0)
        sq = s if sq is None else sq.add_(s)
        if hessian:
            g = symmetric_gram(c)
            gram = g if gram is None else gram.add_(g)
        rows += c.shape[0]
    if sq is None:  # no rows at all
        d = x.shape[-1]
        sq, gram = x.new_zeros(d, dtype=torch.float32), x.new_zeros(d, d, dtype=torch.float32) if hessian else None
    return sq, gram, rows


class OnePassStats:
    """Input statistics of the layers of one block, taken as each layer is called (the same interface the
    methods read from :class:`prunekit.calibrate.InputStats`): layers fed the very same tensor share them.
    Only weak references to the inputs are kept (to recognise a shared input), so an input is freed as soon
    as the block's forward is done with it."""

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self.owner: dict[str, str] = {}
        self.sq_norms: dict[str, Tensor] = {}
        self.grams: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._by_input: dict[int, tuple[weakref.ref, str]] = {}

    def add(self, name: str, x: Tensor) -> None:
        """Record the input ``x`` of layer ``name`` (computed once per distinct tensor)."""
        seen = self._by_input.get(id(x))
        if seen is not None and seen[0]() is x:
            self.owner[name] = seen[1]
            return
        self._by_input[id(x)] = (weakref.ref(x), name)
        self.owner[name] = name
        sq, gram, rows = input_sums(x, self.hessian)
        self.sq_norms[name] = sq
        self.tokens[name] = rows
        if gram is not None:
            self.grams[name] = gram

    def seen(self, name: str) -> bool:
        return name in self.owner

    def col_norms(self, name: str) -> Tensor:
        return self.sq_norms[self.owner[name]].sqrt()

    def gram(self, name: str) -> Tensor:
        return self.grams[self.owner[name]]

    def n_tokens(self, name: str) -> int:
        return self.tokens[self.owner[name]]


class StagedStats(OnePassStats):
    """Input statistics accumulated over several block calls (the staged passes); layers fed the very same
    tensor in one call share them."""

    def __init__(self, hessian: bool) -> None:
        super().__init__(hessian)
        self._last: tuple[weakref.ref, str] | None = None

    def new_call(self) -> None:
        """Start a block call: inputs seen before cannot be shared with the next ones."""
        self._last = None

    def add(self, name: str, x: Tensor) -> None:
        """Add the input ``x`` of layer ``name`` to its (or its input-sharing owner's) sums."""
        if self._last is not None and self._last[0]() is x:
            self.owner.setdefault(name, self._last[1])
            return
        self._last = (weakref.ref(x), name)
        self.owner.setdefault(name, name)
        sq, gram, rows = input_sums(x, self.hessian)
        if name in self.sq_norms:
            self.sq_norms[name] += sq
            self.tokens[name] += rows
            if gram is not None:
                self.grams[name] += gram
        else:
            self.sq_norms[name] = sq
            self.tokens[name] = rows
            if gram is not None:
                self.grams[name] = gram


class _StopBlock(Exception):
    """Ends a block call once the layers of the current stage have seen their inputs."""


def one_pass_possible(plan: PrunePlan) -> bool:
    """Whether the calibration windows fit one block call (all of the same length)."""
    batches = calibration_batches(plan.calibration, 1 << 30, tokens=True)
    return len(batches) == 1


def one_pass_bytes(model: nn.Module, plan: PrunePlan) -> int:
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
    batches = calibration_batches(plan.calibration, 1 << 30, tokens=True)
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


def apply_sequential_(method: Any, model: nn.Module, plan: PrunePlan, two_pass: Any) -> None:
    """Dispatch on ``sequential``: ``"block"`` runs ``two_pass`` (the usual loop, every layer of a block on the
    dense block); ``"layer"`` runs :func:`apply_layer_sequential_`, except on fused MoE experts, which the
    usual loop handles (with a warning that the order changed)."""
    if plan.options.get("sequential", "layer") != "layer":
        return two_pass(model, plan)
    if getattr(plan, "experts", None):
        warnings.warn(f"{method.name} sequential='layer' does not cover fused MoE expert weights yet; this model "
                      "is pruned with sequential='block' (every layer of a block on the dense block's inputs)",
                      stacklevel=4)
        return two_pass(model, plan)
    return apply_layer_sequential_(method, model, plan)


def apply_layer_sequential_(method: Any, model: nn.Module, plan: PrunePlan) -> None:
    """Prune every layer on the inputs its pruned predecessors give it: in one pass per block when the
    estimate fits the budget and the windows share one length, else in staged passes (same result)."""
    device = plan.options.get("device")
    max_gb = plan.options.get("one_pass_max_gb")
    budget = int(max_gb * 1e9) if max_gb is not None else memory_budget(device)
    need = one_pass_bytes(model, plan)
    if one_pass_possible(plan) and need <= budget:
        return apply_one_pass_(method, model, plan)
    why = ("the calibration windows differ in length" if not one_pass_possible(plan) else
           f"one pass over all windows needs about {need / 1e9:.1f} GB of activations, over the budget of "
           f"{budget / 1e9:.1f} GB (one_pass_max_gb)")
    warnings.warn(f"{method.name} sequential='layer': {why}; pruning each block in staged passes of "
                  f"{plan.options.get('batch_size', 8)} windows instead (the same result, about two more "
                  "forwards per block)", stacklevel=4)
    return apply_staged_(method, model, plan)


def _inside(method: Any, model: nn.Module, plan: PrunePlan) -> list[Target]:
    from ..calibrate import find_blocks

    blocks = find_blocks(model)
    inside = [t for t in plan.targets if blocks.contains(t.name)]
    outside = [t.name for t in plan.targets if t not in inside]
    for name in outside:
        plan.skipped[name] = f"outside the transformer blocks ({blocks.name}.*): {method.name} prunes blocks only"
    if outside:
        warnings.warn(f"{method.name} prunes the transformer blocks only; left dense: {', '.join(outside)}",
                      stacklevel=4)
    return inside


def apply_one_pass_(method: Any, model: nn.Module, plan: PrunePlan) -> None:
    """Prune ``model`` block by block with ``method`` (a BlockwiseMethod), one forward per block, each target
    pruned just before it runs on its real (partly pruned) inputs."""
    inside = _inside(method, model, plan)
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


def apply_staged_(method: Any, model: nn.Module, plan: PrunePlan) -> None:
    """The one-pass computation with memory bounded to ``batch_size`` windows: per block, stage after stage,
    run the block over the batches until the next group of not-yet-pruned layers that read one input has
    seen it (then stop the call), accumulate that group's statistics, prune the group."""
    inside = _inside(method, model, plan)
    sparsities = method.layer_sparsities(model, plan, inside)
    engine = {k: plan.options[k] for k in ENGINE_OPTIONS if k in plan.options}
    device = engine.get("device")
    journal = plan.journal

    def visit(i: int, block_name: str, block: nn.Module, inputs: list[BlockInputs]) -> None:
        pending = list(block_targets(plan, block_name))
        while pending:
            begin = getattr(method, "begin_block", None)
            if begin is not None:
                begin()
            stats = StagedStats(method.hessian)
            group: list[str] = []

            def stage_hook(t):
                def hook(module: nn.Module, args: tuple) -> None:
                    x = args[0]
                    if call["first"] is None and (not group or t.name in group):
                        call["first"] = x
                    elif x is not call["first"] or (group and t.name not in group) or t.name in call["seen"]:
                        raise _StopBlock
                    call["seen"].add(t.name)
                    stats.add(t.name, x)
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
                            raise RuntimeError(f"{block_name}: the forward never called "
                                               f"{', '.join(t.name for t in pending)}")
            finally:
                for h in handles:
                    h.remove()
            for t in [t for t in pending if t.name in group]:
                if journal is not None and method.updates_weights:
                    journal.record(t.module)
                method.prune_layer(t.name, t.module, stats, sparsities[t.name], plan)
            pending = [t for t in pending if t.name not in group]

    walk_blocks_(model, plan.calibration, visit, progress=plan.progress, desc=f"{method.name} (staged)", **engine)
