"""Layer pruning for transformers: remove whole blocks, or single attention / MLP sublayers.

Blocks are ranked by ShortGPT's Block Influence (Men et al., 2024): 1 − the mean cosine similarity
between a block's input and output hidden states on calibration data; the least influential go.
Sublayers are chosen as FinerCut does (Zhang et al., 2024): greedily, each step removes the attention
or MLP sublayer whose removal changes the model's output least (angular distance of the outputs).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...calibrate.batches import calibration_batches
from ...calibrate.blocks import find_blocks
from ...calibrate.blockwise import model_call_options
from ...calibrate.moe import fused_experts
from ...infra.calling import call_model, output_tensor
from ...core.fraction import check_fraction
from ..graph.report import count_params
from .common import reload_problem_after

UNITS = ("block", "sublayer")


@dataclass
class LayerPruneReport:
    """What :func:`prune_layers_` did: the removed blocks (or (block, "attn"|"mlp") sublayers)."""

    unit: str
    removed: list[Any]
    blocks_before: int
    blocks_after: int
    importance: str
    params_before: int
    params_after: int
    reloadable: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return {**asdict(self), "removed": [list(r) if isinstance(r, tuple) else r for r in self.removed]}

    def __str__(self) -> str:
        what = "blocks" if self.unit == "block" else "sublayers"
        text = (f"layers: removed {len(self.removed)} {what} {self.removed} by {self.importance}; blocks "
                f"{self.blocks_before} → {self.blocks_after}; parameters {self.params_before:,} → {self.params_after:,}")
        return "; ".join([text, *self.notes])


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's ModuleList of transformer blocks and its name (see :func:`prunekit.calibrate.find_blocks`)."""
    blocks = find_blocks(model)
    return blocks.name, blocks.modules


def _attention_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    for attr in ("self_attn", "attention", "attn", "self_attention"):
        if isinstance(getattr(block, attr, None), nn.Module):
            return attr, getattr(block, attr)
    return None


def _mlp_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    for attr in ("mlp", "feed_forward", "ffn", "block_sparse_moe"):
        if isinstance(getattr(block, attr, None), nn.Module):
            return attr, getattr(block, attr)
    return None


def _sublayer(block: nn.Module, kind: str) -> tuple[str, nn.Module] | None:
    return (_attention_of if kind == "attn" else _mlp_of)(block)


def _batches(calibration: Any) -> list[Any]:
    return calibration_batches(calibration)


def _call(model: nn.Module, batch: Any, options: dict[str, Any]) -> Any:
    return call_model(model, {**batch, **options} if isinstance(batch, dict) else batch)


def _hidden(x: Any) -> Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def block_influence(model: nn.Module, calibration: Any, progress: bool = False) -> Tensor:
    """ShortGPT's Block Influence of each block: 1 − mean cosine(input, output) over calibration tokens."""
    blocks = find_blocks(model).modules
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)
    inputs: dict[int, Tensor] = {}

    def pre(i: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            a, b = inputs.pop(i).double(), _hidden(out).double()
            cos = nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
            sums[i] += cos.sum()
            counts[i] += cos.numel()
        return hook

    handles = []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(b.register_forward_hook(post(i), with_kwargs=True))
    options = model_call_options(model)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(_batches(calibration), desc="block influence", disable=not progress, leave=False):
            _call(model, batch, options)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return 1 - sums / counts.clamp_min(1)


class _ZeroSublayer(nn.Module):
    """Stands in for a removed attention or MLP sublayer of a pre-norm block: adds nothing to the residual.
    ``extras`` is how many more items the replaced sublayer returned after its output (attention weights …)."""

    def __init__(self, extras: int) -> None:
        super().__init__()
        self.extras = extras

    def forward(self, hidden_states: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        zero = torch.zeros_like(hidden_states)
        return (zero, *([None] * self.extras)) if self.extras else zero


def _is_pre_norm(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "do_layer_norm_before", True) is False:  # OPT-350m
        return False
    return getattr(config, "model_type", "") not in ("bert", "roberta", "distilbert", "electra", "xlm-roberta")


@torch.no_grad()
def _outputs(model: nn.Module, batches: list[Any], options: dict[str, Any]) -> list[Tensor]:
    return [output_tensor(_call(model, b, options)).double() for b in batches]


def _angular(a: list[Tensor], b: list[Tensor]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        cos = nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
        total += float(torch.arccos(cos.clamp(-1, 1)).mean() / torch.pi)
    return total / len(a)


def _silence(mod: nn.Module, extras: dict[int, int]) -> Any:
    def hook(m: nn.Module, args: tuple, out: Any) -> Any:
        if isinstance(out, tuple):
            extras[id(m)] = len(out) - 1
            return (torch.zeros_like(out[0]),) + tuple(None for _ in out[1:])
        extras[id(m)] = 0
        return torch.zeros_like(out)
    return mod.register_forward_hook(hook)


def choose_sublayers(model: nn.Module, calibration: Any, n: int, progress: bool = False,
                     extras: dict[int, int] | None = None) -> list[tuple[int, str]]:
    """FinerCut's greedy choice of ``n`` sublayers: (block index, ``attn`` or ``mlp``) in removal order."""
    blocks = find_blocks(model).modules
    batches = _batches(calibration)
    options = model_call_options(model)
    extras = {} if extras is None else extras
    was_training = model.training
    model.eval()
    reference = _outputs(model, batches, options)
    removed: list[tuple[int, str]] = []
    silenced: dict[tuple[int, str], Any] = {}
    candidates = [(i, k) for i in range(len(blocks)) for k in ("attn", "mlp") if _sublayer(blocks[i], k)]
    if n > len(candidates):
        raise ValueError(f"asked to remove {n} sublayers, but the blocks hold {len(candidates)} attention/MLP sublayers")
    try:
        for _ in tqdm(range(n), desc="FinerCut", disable=not progress, leave=False):
            best, best_d = None, float("inf")
            for c in candidates:
                if c in silenced:
                    continue
                h = _silence(_sublayer(blocks[c[0]], c[1])[1], extras)
                d = _angular(reference, _outputs(model, batches, options))
                h.remove()
                if d < best_d:
                    best, best_d = c, d
            silenced[best] = _silence(_sublayer(blocks[best[0]], best[1])[1], extras)
            removed.append(best)
    finally:
        for h in silenced.values():
            h.remove()
        model.train(was_training)
    return removed


@torch.no_grad()
def prune_layers_(model: nn.Module, calibration: Any, n: int | None = None, *, sparsity: float | None = None,
                  unit: str = "block", progress: bool = False, reloadable: bool = True) -> LayerPruneReport:
    """Remove ``n`` blocks (``unit="block"``, by ShortGPT's Block Influence) or ``n`` attention/MLP
    sublayers (``unit="sublayer"``, chosen greedily as FinerCut does) from a transformer, in place;
    ``sparsity=`` instead of ``n`` removes that fraction of them (rounded, at least one block kept).

    ``calibration`` is one batch of model inputs (tensor of token ids, dict, tuple) or a list of them.
    Block removal updates the config (``num_hidden_layers``, per-layer lists such as ``layer_types`` and
    ``mlp_only_layers``) so the model saves and reloads; a removed sublayer is replaced by a module that
    adds nothing to the residual stream (pre-norm models only). A block removal that ``from_pretrained``
    could not rebuild is refused before anything changes (``reloadable=False``: removed anyway). Returns a
    :class:`LayerPruneReport`."""
    if unit not in UNITS:
        raise ValueError(f"unit must be 'block' or 'sublayer', got {unit!r}")
    found = find_blocks(model)
    blocks = found.modules
    total = len(blocks) if unit == "block" else 2 * len(blocks)
    if (n is None) == (sparsity is None):
        raise ValueError("pass either n= (how many to remove) or sparsity= (the fraction to remove), not both"
                         if n is not None else "pass n= (how many to remove) or sparsity= (the fraction to remove)")
    if sparsity is not None:
        s = check_fraction(sparsity, "sparsity", "[0, 1)", hint="prune_layers_ removes that fraction of the blocks")
        n = min(total - 1, round(s * total))
    limit = total - 1
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= limit:
        raise ValueError(f"n must be an int in [0, {limit}] for unit={unit!r} on {len(blocks)} blocks, got {n!r}")
    if unit == "sublayer" and not _is_pre_norm(model):
        raise ValueError("sublayer removal needs a pre-norm model (residual outside the sublayer, as in Llama or ViT); "
                         "BERT-style post-norm blocks normalize inside the sublayer: use unit='block'")
    _batches(calibration)  # refuse bad calibration before any work
    before, count = count_params(model), len(blocks)
    importance = "block_influence" if unit == "block" else "finercut"
    if n == 0:
        return LayerPruneReport(unit, [], count, count, importance, before, before, True)
    if unit == "block":
        bi = block_influence(model, calibration, progress)
        drop = sorted(torch.argsort(bi, stable=True)[:n].tolist())
        problem = reload_problem_after(model, lambda twin: _remove_blocks_(
            twin, found.name, twin.get_submodule(found.name), drop))
        if problem and reloadable:
            raise ValueError(f"prune_layers_: from_pretrained could not rebuild {type(model).__name__} without blocks "
                             f"{drop}: {problem}. Nothing was changed; pass reloadable=False to remove them anyway and "
                             "save the model with torch.save")
        _remove_blocks_(model, found.name, blocks, drop)
        notes = [] if problem is None else [f"from_pretrained cannot rebuild it: {problem}"]
        if problem:
            warnings.warn(f"prune_layers_: {problem}", stacklevel=2)
        return LayerPruneReport(unit, drop, count, len(find_blocks(model).modules), importance, before, count_params(model),
                                problem is None, notes)
    extras: dict[int, int] = {}
    chosen = choose_sublayers(model, calibration, n, progress, extras)
    remove_sublayers_(model, chosen, extras)
    note = "removed sublayers are replaced by modules that add nothing; from_pretrained rebuilds them dense"
    return LayerPruneReport(unit, chosen, count, count, importance, before, count_params(model), False, [note])


def remove_sublayers_(model: nn.Module, chosen: Iterable[tuple[int, str]], extras: dict[int, int] | None = None) -> None:
    """Replace the (block index, ``attn`` | ``mlp``) sublayers ``chosen`` (e.g. a prefix of
    :func:`choose_sublayers`' greedy order: the first k of its choice of n are its choice of k) by modules that
    add nothing to the residual stream. ``extras``: what :func:`choose_sublayers` recorded of each sublayer's extra
    outputs (default: attention returns one more item, its weights)."""
    blocks = find_blocks(model).modules
    extras = {} if extras is None else extras
    for i, kind in chosen:
        attr, mod = _sublayer(blocks[i], kind)
        setattr(blocks[i], attr, _ZeroSublayer(extras.get(id(mod), 1 if kind == "attn" else 0)))


def _has_experts(block: nn.Module) -> bool:
    return bool(fused_experts(block)) or any(name.endswith("experts") for name, _ in block.named_modules())


def _remove_blocks_(model: nn.Module, name: str, blocks: nn.ModuleList, drop: Iterable[int]) -> None:
    drop = set(drop)
    kept = [b for i, b in enumerate(blocks) if i not in drop]
    new = nn.ModuleList(kept)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    for i, b in enumerate(kept):  # KV caches index layers by position
        for m in b.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    config = getattr(model, "config", None)
    if config is None:
        return
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(kept)
    for field_name in ("layer_types",):
        values = getattr(config, field_name, None)
        if isinstance(values, list) and len(values) == len(blocks):
            setattr(config, field_name, [t for i, t in enumerate(values) if i not in drop])
    if isinstance(getattr(config, "mlp_only_layers", None), list):  # Qwen2/3-MoE: which blocks have a dense MLP
        config.mlp_only_layers = [i for i, b in enumerate(kept) if not _has_experts(b)]
        if hasattr(config, "decoder_sparse_step"):
            config.decoder_sparse_step = 1
