"""Per-layer (heterogeneous) shapes: every block keeps its own number of key/value-head groups and MLP neurons,
chosen under a budget, as Puzzletron does with its MIP over per-block alternatives.

1. **Rank** (one pass over the calibration tokens): each MLP neuron by Minitron's activation importance (the
   mean |input| of ``down_proj`` for that neuron), each key/value group by the summed mean L2 norm of its
   query heads' outputs (the input of ``o_proj``).
2. **Options**: each block's MLP at 100, 87.5, … 25% of its current neurons (multiples of 32 or 8 as
   :func:`~.search.round_width` rounds), each block's attention at every whole number of key/value groups (the query heads per group stay as
   they are, so ``num_key_value_groups`` is unchanged); multi-query attention (one group) keeps its heads. A
   strict width multiple (256 for llama.cpp's K-quants) keeps only MLP widths that are multiples of it and group
   counts whose ``o_proj`` row (query heads × head_dim) is one (:func:`~.search.width_options`).
3. **Score**: every option of every block is tried alone on the calibration windows — the dropped neurons'
   or heads' outputs are zeroed at the input of ``down_proj`` / ``o_proj``, which is exactly what removing
   them does — and scored by the increase of the next-token loss over the unpruned model's.
4. **Choose** one option per block and module under the budget with :func:`.optimize.choose` (exact MILP or
   greedy); costs are exact parameter counts (or measured seconds, :mod:`.latency`).
5. **Cut** each block's modules to its chosen width (:func:`apply_layer_shapes_`). A model whose blocks all
   end up alike gets the plain config fields (stock ``from_pretrained`` reads it); otherwise the config keeps
   its fields and records every block's sizes under ``prunekit_layer_shapes``, and :func:`load_shrunk`
   (not stock ``from_pretrained``, which refuses the mismatched sizes; it lives in :mod:`prunekit.models.shrunk`, so
   every loader reads such a folder) reads the folder back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models.shrunk import CONFIG_KEY, LayerShapes, load_shrunk, stored_layer_shapes  # noqa: F401 (re-exported)
from .layout import head_dim_of, width_layout
from .optimize import Option, choose
from .search import DEFAULT_WIDTH_MULTIPLE, width_options
from .width import token_batches

PER_LAYER_AXES = ("heads", "neurons", "depth")
FFN_GRID = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
KINDS = ("attention", "mlp")


def _blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.model.layers)


def layer_shapes_of(model: nn.Module) -> LayerShapes:
    """The sizes every block of a supported decoder has now (read from its modules, not its config)."""
    c = model.config
    d = head_dim_of(c)
    rep = int(c.num_attention_heads) // int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    kv, ffn = [], []
    for b in _blocks(model):
        kv.append(b.self_attn.k_proj.out_features // d)
        ffn.append(b.mlp.down_proj.in_features)
    return LayerShapes(tuple(kv), tuple(ffn), rep, d)


def check_per_layer_axes(axes: Iterable[str]) -> tuple[str, ...]:
    """The axes a per-layer search may cut (heads, neurons), validated."""
    given = tuple(axes)
    bad = [a for a in given if a not in PER_LAYER_AXES]
    if isinstance(axes, str) or not given or bad:
        raise ValueError(f"the per-layer search cuts {', '.join(PER_LAYER_AXES)} block by block; got axes "
                         f"{', '.join(given) or 'none'} (cut the residual width with the uniform search first)")
    return tuple(a for a in PER_LAYER_AXES if a in given)


def ffn_options(width: int, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> list[int]:
    """MLP widths offered to a block of ``width`` neurons (largest first; see :func:`~.search.width_options`)."""
    return width_options(width, multiple, FFN_GRID)


def kv_options(kv: int, multiple: int = DEFAULT_WIDTH_MULTIPLE, row: int = 1) -> list[int]:
    """Key/value group counts offered to a block with ``kv`` groups (all of them down to one); with a strict
    ``multiple``, only the counts whose ``o_proj`` row (``row`` = query heads per group × head_dim per group) it
    divides, besides ``kv`` itself."""
    out = list(range(kv, 0, -1)) if kv > 1 else [kv]
    if multiple == DEFAULT_WIDTH_MULTIPLE:
        return out
    return [k for k in out if k == kv or k * row % multiple == 0]


@dataclass
class Ranking:
    """Per block: neurons and key/value groups, most important first."""

    neurons: list[Tensor]
    groups: list[Tensor]


@torch.no_grad()
def rank_units(model: nn.Module, calibration: Any) -> Ranking:
    """Minitron activation importance of every MLP neuron and key/value group, one pass over ``calibration``."""
    shapes = layer_shapes_of(model)
    blocks = _blocks(model)
    neuron = [torch.zeros(b.mlp.down_proj.in_features, dtype=torch.float64) for b in blocks]
    head = [torch.zeros(b.self_attn.o_proj.in_features // shapes.head_dim, dtype=torch.float64) for b in blocks]
    count = [0]
    hooks = []

    def on_down(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            neuron[i] += x.abs().reshape(-1, x.shape[-1]).sum(0)
        return hook

    def on_o(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            x = x.reshape(-1, x.shape[-1] // shapes.head_dim, shapes.head_dim)
            head[i] += x.norm(dim=-1).sum(0)
        return hook

    for i, b in enumerate(blocks):
        hooks.append(b.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        hooks.append(b.self_attn.o_proj.register_forward_pre_hook(on_o(i)))
    was_training = model.training
    model.eval()
    try:
        for batch in token_batches(calibration):
            model(input_ids=batch, use_cache=False)
            count[0] += batch.numel()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rep = shapes.queries_per_group
    neurons = [torch.argsort(s, descending=True, stable=True) for s in neuron]
    groups = [torch.argsort(h.reshape(-1, rep).sum(1), descending=True, stable=True) for h in head]
    return Ranking(neurons, groups)


class _Zeroing:
    """Zeroes the inputs of one block's ``down_proj`` (dropped neurons) or ``o_proj`` (dropped heads) while active."""

    def __init__(self, module: nn.Module, keep: Tensor, width: int) -> None:
        mask = torch.zeros(width, dtype=torch.bool)
        mask[keep] = True
        self.mask = mask
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _m: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * self.mask.to(x.device, x.dtype),) + tuple(args[1:])

    def remove(self) -> None:
        self.handle.remove()


def _query_rows(groups: Tensor, rep: int, d: int) -> Tensor:
    """Rows of q_proj (= columns of o_proj) of the query heads of ``groups`` (ascending)."""
    heads = (groups.sort().values[:, None] * rep + torch.arange(rep)).reshape(-1)
    return (heads[:, None] * d + torch.arange(d)).reshape(-1)


def _kv_rows(groups: Tensor, d: int) -> Tensor:
    return (groups.sort().values[:, None] * d + torch.arange(d)).reshape(-1)


@torch.no_grad()
def _loss(model: nn.Module, batches: list[Tensor]) -> float:
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    return total / count


@torch.no_grad()
def _block_outputs(model: nn.Module, batches: list[Tensor]) -> list[list[Any]]:
    """Every block's output on every batch (``[block][batch]``), for :func:`_loss_from`."""
    blocks = _blocks(model)
    outs: list[list[Any]] = [[] for _ in blocks]
    hooks = [b.register_forward_hook(lambda _m, _a, out, i=i: outs[i].append(out)) for i, b in enumerate(blocks)]
    try:
        for batch in batches:
            model(input_ids=batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return outs


@torch.no_grad()
def _loss_from(model: nn.Module, batches: list[Tensor], first: int, cached: list[list[Any]]) -> float:
    """The next-token loss with blocks before ``first`` replaced by their cached outputs (a change at block
    ``first`` or later cannot alter them), which saves their compute."""
    blocks = _blocks(model)
    total, count = 0.0, 0
    for bi, batch in enumerate(batches):
        try:
            for j in range(first):
                blocks[j].forward = lambda *_a, _out=cached[j][bi], **_k: _out
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        finally:
            for j in range(first):
                if "forward" in vars(blocks[j]):
                    del blocks[j].forward
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    return total / count


@dataclass
class LayerTable:
    """Every block's options per module kind with their loss increase (``options[kind][block]`` = [(width, Δloss)],
    the current width first at 0) and, when depth is searched, the loss increase of skipping each block."""

    base_loss: float
    options: dict[str, list[list[tuple[int, float]]]]
    drop: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"base_loss": self.base_loss, "options": self.options, "drop": self.drop}


class _Skipping:
    """Makes one block return its input unchanged (the block removed) while active."""

    def __init__(self, block: nn.Module) -> None:
        self.handle = block.register_forward_hook(self._hook, with_kwargs=True)

    @staticmethod
    def _hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def score_options(model: nn.Module, calibration: Any, ranking: Ranking, axes: tuple[str, ...] = PER_LAYER_AXES,
                  progress: bool = False, multiple: int = DEFAULT_WIDTH_MULTIPLE) -> LayerTable:
    """Step 3 of the module docstring: the loss increase of every option of every block, tried alone."""
    shapes = layer_shapes_of(model)
    blocks = _blocks(model)
    batches = token_batches(calibration)
    was_training = model.training
    model.eval()
    try:
        base = _loss(model, batches)
        cached = _block_outputs(model, batches)
        table: dict[str, list[list[tuple[int, float]]]] = {"attention": [], "mlp": []}
        trials: list[tuple[str, int, int]] = []
        for i, b in enumerate(blocks):
            row = shapes.queries_per_group * shapes.head_dim  # o_proj's row per key/value group
            kvs = kv_options(shapes.kv_heads[i], multiple, row) if "heads" in axes else [shapes.kv_heads[i]]
            ffns = ffn_options(shapes.ffn[i], multiple) if "neurons" in axes else [shapes.ffn[i]]
            table["attention"].append([(kvs[0], 0.0)])
            table["mlp"].append([(ffns[0], 0.0)])
            trials += [("attention", i, k) for k in kvs[1:]] + [("mlp", i, f) for f in ffns[1:]]
        if "depth" in axes:
            trials += [("drop", i, 0) for i in range(len(blocks))]
        drop = [0.0] * len(blocks) if "depth" in axes else None
        for kind, i, width in tqdm(trials, desc="shrink: scoring per-layer options", disable=not progress, leave=False):
            b = blocks[i]
            if kind == "drop":
                z: Any = _Skipping(b)
            elif kind == "mlp":
                z = _Zeroing(b.mlp.down_proj, ranking.neurons[i][:width], shapes.ffn[i])
            else:
                rows = _query_rows(ranking.groups[i][:width], shapes.queries_per_group, shapes.head_dim)
                z = _Zeroing(b.self_attn.o_proj, rows, b.self_attn.o_proj.in_features)
            try:
                delta = _loss_from(model, batches, i, cached) - base
            finally:
                z.remove()
            if kind == "drop":
                drop[i] = delta  # type: ignore[index]
            else:
                table[kind][i].append((width, delta))
    finally:
        model.train(was_training)
    return LayerTable(base, table, drop)


def unit_costs(model: nn.Module) -> list[dict[str, int]]:
    """Per block: parameters per key/value group (its query heads, key and value rows, output columns), per MLP
    neuron (gate and up rows, down column), biases included, and of the whole block; exact."""
    shapes = layer_shapes_of(model)
    d, rep = shapes.head_dim, shapes.queries_per_group
    out = []
    for b in _blocks(model):
        a, m = b.self_attn, b.mlp
        H = a.q_proj.in_features
        group = rep * d * (H + (a.q_proj.bias is not None)) + 2 * d * (H + (a.k_proj.bias is not None)) + rep * d * H
        neuron = H + (m.gate_proj.bias is not None) + H + (m.up_proj.bias is not None) + H
        block = sum(p.numel() for p in b.parameters())
        out.append({"group": group, "neuron": neuron, "block": block})
    return out


DROP = (0, 0)  # a block's choice (kv groups, neurons) that removes it


@dataclass
class Choices:
    """The knapsack: one group per block, each option a (kv groups, neurons) pair or :data:`DROP`."""

    pairs: list[list[tuple[int, int]]]
    groups: list[list[Option]]


def _value(delta: float, removed: float) -> float:
    # a loss that falls when a unit goes is noise on a few windows: counted as no change; among options the
    # scores cannot tell apart, the one that removes less wins (by a margin far below any measured change)
    return max(delta, 0.0) + 1e-9 * removed


def block_choices(model: nn.Module, table: LayerTable, cost: Callable[[int, int, int], float],
                  drop_cost: Callable[[int], float] | None = None) -> Choices:
    """Each block's options as knapsack groups: value = the attention's and the MLP's loss increases added (the
    drop option: its own measured increase), cost = ``cost(block, kv, ffn)`` (``drop_cost(block)`` for a drop),
    the change the option makes to what the budget counts (negative for a cut)."""
    shapes = layer_shapes_of(model)
    pairs, groups = [], []
    for i in range(len(shapes.ffn)):
        p, g = [], []
        for kv, da in table.options["attention"][i]:
            for f, dm in table.options["mlp"][i]:
                removed = (1 - kv / shapes.kv_heads[i]) + (1 - f / shapes.ffn[i])
                p.append((kv, f))
                g.append(Option(cost(i, kv, f), _value(da, 0) + _value(dm, 0) + 1e-9 * removed))
        if table.drop is not None:
            if drop_cost is None:
                raise ValueError("depth is searched: pass drop_cost")
            p.append(DROP)
            g.append(Option(drop_cost(i), _value(table.drop[i], 2.0)))
        pairs.append(p)
        groups.append(g)
    return Choices(pairs, groups)


def param_cost(model: nn.Module) -> tuple[Callable[[int, int, int], float], Callable[[int], float]]:
    """Exact parameter changes of each block option (negative: removed)."""
    shapes = layer_shapes_of(model)
    units = unit_costs(model)

    def cost(i: int, kv: int, f: int) -> float:
        return -((shapes.kv_heads[i] - kv) * units[i]["group"] + (shapes.ffn[i] - f) * units[i]["neuron"])

    def drop(i: int) -> float:
        return -units[i]["block"]

    return cost, drop


def plan_layers(model: nn.Module, choices: Choices, allowance: float, optimizer: str = "milp") -> LayerShapes:
    """The per-block shapes (a dropped block as 0 groups and 0 neurons) that change the budgeted count by at most
    ``allowance`` (negative: what must be saved) with the smallest summed loss increase."""
    drops = [p.index(DROP) if DROP in p else None for p in choices.pairs]
    cap = (drops, len(drops) - 1) if any(d is not None for d in drops) else None  # at least one block stays
    picks = choose(choices.groups, allowance, optimizer, cap)
    now = layer_shapes_of(model)
    chosen = [choices.pairs[i][p] for i, p in enumerate(picks)]
    return LayerShapes(tuple(c[0] for c in chosen), tuple(c[1] for c in chosen), now.queries_per_group, now.head_dim)


def _cut_linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    b = lin.bias.detach() if lin.bias is not None else None
    if b is not None and rows is not None:
        b = b[rows]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


@dataclass
class LayerCutReport:
    """What :func:`apply_layer_shapes_` did."""

    before: LayerShapes
    after: LayerShapes
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "params_before": self.params_before,
                "params_after": self.params_after}

    def __str__(self) -> str:
        return f"{self.after} (was {self.before}); parameters {self.params_before:,} → {self.params_after:,}"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def apply_layer_shapes_(model: nn.Module, shapes: LayerShapes, ranking: Ranking | None = None,
                        calibration: Any = None) -> LayerCutReport:
    """Cut every block of ``model`` in place to ``shapes``, keeping the most important neurons and groups
    (``ranking``, else ranked now on ``calibration``); records the shapes in the config (see the module docstring)."""
    width_layout(model)
    now = layer_shapes_of(model)
    n = len(now.ffn)
    if (len(shapes.kv_heads), len(shapes.ffn)) != (n, n) or shapes.queries_per_group != now.queries_per_group \
            or shapes.head_dim != now.head_dim:
        raise ValueError(f"the shapes describe {len(shapes.ffn)} blocks of {shapes.queries_per_group} query heads per "
                         f"group × {shapes.head_dim}; the model has {n} blocks of {now.queries_per_group} × {now.head_dim}")
    for i in range(n):
        dropped = (shapes.kv_heads[i], shapes.ffn[i]) == DROP
        if not dropped and not (1 <= shapes.kv_heads[i] <= now.kv_heads[i] and 1 <= shapes.ffn[i] <= now.ffn[i]):
            raise ValueError(f"block {i}: {shapes.kv_heads[i]} groups and {shapes.ffn[i]} neurons is not a cut of its "
                             f"{now.kv_heads[i]} groups and {now.ffn[i]} neurons (0 and 0 removes the block)")
    drop = [i for i in range(n) if (shapes.kv_heads[i], shapes.ffn[i]) == DROP]
    if len(drop) == n:
        raise ValueError("the shapes remove every block; keep at least one")
    if ranking is None:
        if calibration is None:
            raise ValueError("apply_layer_shapes_ needs ranking= or calibration= to choose what to keep")
        ranking = rank_units(model, calibration)
    before = _params(model)
    d, rep = now.head_dim, now.queries_per_group
    for i, b in enumerate(_blocks(model)):
        if i in drop:
            continue
        if shapes.ffn[i] < now.ffn[i]:
            keep = ranking.neurons[i][:shapes.ffn[i]].sort().values
            m = b.mlp
            m.gate_proj, m.up_proj = _cut_linear(m.gate_proj, rows=keep), _cut_linear(m.up_proj, rows=keep)
            m.down_proj = _cut_linear(m.down_proj, cols=keep)
            if hasattr(m, "intermediate_size"):
                m.intermediate_size = shapes.ffn[i]
        if shapes.kv_heads[i] < now.kv_heads[i]:
            groups = ranking.groups[i][:shapes.kv_heads[i]]
            q, kv = _query_rows(groups, rep, d), _kv_rows(groups, d)
            a = b.self_attn
            a.q_proj, a.o_proj = _cut_linear(a.q_proj, rows=q), _cut_linear(a.o_proj, cols=q)
            a.k_proj, a.v_proj = _cut_linear(a.k_proj, rows=kv), _cut_linear(a.v_proj, rows=kv)
    if drop:
        remove_blocks_(model, drop)
    record_layer_shapes(model.config, layer_shapes_of(model))
    return LayerCutReport(now, layer_shapes_of(model), before, _params(model))


def remove_blocks_(model: nn.Module, drop: list[int]) -> None:
    """Remove blocks ``drop`` (indices) in place: the block list, each kept block's ``layer_idx`` (the KV cache
    indexes layers by position), ``num_hidden_layers`` and per-layer config lists (``layer_types``)."""
    blocks = _blocks(model)
    gone = set(drop)
    kept = [b for i, b in enumerate(blocks) if i not in gone]
    model.model.layers = nn.ModuleList(kept)
    for i, b in enumerate(kept):
        for m in b.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    c = model.config
    c.num_hidden_layers = len(kept)
    if isinstance(getattr(c, "layer_types", None), list) and len(c.layer_types) == len(blocks):
        c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in gone]


def record_layer_shapes(config: Any, shapes: LayerShapes) -> None:
    """Write ``shapes`` into ``config``: plain fields when uniform (stock ``from_pretrained`` reads them),
    else ``prunekit_layer_shapes`` beside the unchanged fields."""
    if shapes.uniform:
        config.intermediate_size = shapes.ffn[0]
        config.num_key_value_heads = shapes.kv_heads[0]
        config.num_attention_heads = shapes.heads[0]
        config.head_dim = shapes.head_dim
        if hasattr(config, CONFIG_KEY):
            delattr(config, CONFIG_KEY)
    else:
        setattr(config, CONFIG_KEY, shapes.to_dict())
