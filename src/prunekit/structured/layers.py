"""Layer pruning for transformers: remove whole blocks, or single attention / MLP sublayers.

Blocks are ranked by ShortGPT's Block Influence (Men et al., 2024): 1 − the mean cosine similarity
between a block's input and output hidden states on calibration data; the least influential go.
Sublayers are chosen as FinerCut does (Zhang et al., 2024): greedily, each step removes the attention
or MLP sublayer whose removal changes the model's output least (angular distance of the outputs).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.calling import call_model, output_tensor

UNITS = ("block", "sublayer")


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's ModuleList of transformer blocks (``model.layers``, ``encoder.layer``, ``h`` …):
    the longest ModuleList whose entries contain an attention module."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and all(_attention_of(b) is not None for b in m):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise ValueError(f"found no list of transformer blocks in {type(model).__name__}; layer pruning supports "
                         "models whose blocks sit in an nn.ModuleList (Llama, BERT, ViT, GPT-2 …)")
    return best


def _attention_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    for attr in ("self_attn", "attention", "attn"):
        if isinstance(getattr(block, attr, None), nn.Module):
            return attr, getattr(block, attr)
    return None


def _mlp_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    for attr in ("mlp", "feed_forward", "ffn"):
        if isinstance(getattr(block, attr, None), nn.Module):
            return attr, getattr(block, attr)
    return None


def _batches(calibration: Any) -> list[Any]:
    if isinstance(calibration, (list, tuple)) and calibration and not isinstance(calibration[0], (int, float)):
        return list(calibration)
    return [calibration]


def _hidden(x: Any) -> Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def block_influence(model: nn.Module, calibration: Any, progress: bool = False) -> Tensor:
    """ShortGPT's Block Influence of each block: 1 − mean cosine(input, output) over calibration tokens."""
    _, blocks = block_list(model)
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
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(_batches(calibration), desc="block influence", disable=not progress, leave=False):
            call_model(model, batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return 1 - sums / counts.clamp_min(1)


class _ZeroSublayer(nn.Module):
    """Stands in for a removed attention or MLP sublayer of a pre-norm block: adds nothing to the residual."""

    def __init__(self, returns_tuple: bool) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        zero = torch.zeros_like(hidden_states)
        return (zero, None) if self.returns_tuple else zero


def _is_pre_norm(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") not in ("bert", "roberta", "distilbert", "electra", "xlm-roberta")


@torch.no_grad()
def _outputs(model: nn.Module, batches: list[Any]) -> list[Tensor]:
    return [output_tensor(call_model(model, b)).double() for b in batches]


def _angular(a: list[Tensor], b: list[Tensor]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        cos = nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
        total += float(torch.arccos(cos.clamp(-1, 1)).mean() / torch.pi)
    return total / len(a)


def choose_sublayers(model: nn.Module, calibration: Any, n: int, progress: bool = False) -> list[tuple[int, str]]:
    """FinerCut's greedy choice of ``n`` sublayers: (block index, ``attn`` or ``mlp``) in removal order."""
    _, blocks = block_list(model)
    batches = _batches(calibration)
    was_training = model.training
    model.eval()
    reference = _outputs(model, batches)
    removed: list[tuple[int, str]] = []
    silenced: dict[tuple[int, str], Any] = {}

    def silence(i: int, kind: str) -> Any:
        attr, mod = (_attention_of if kind == "attn" else _mlp_of)(blocks[i])

        def hook(m: nn.Module, args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                return (torch.zeros_like(out[0]),) + tuple(None for _ in out[1:])
            return torch.zeros_like(out)
        return mod.register_forward_hook(hook)

    candidates = [(i, k) for i in range(len(blocks)) for k in ("attn", "mlp")]
    try:
        for _ in tqdm(range(n), desc="FinerCut", disable=not progress, leave=False):
            best, best_d = None, float("inf")
            for c in candidates:
                if c in silenced:
                    continue
                h = silence(*c)
                d = _angular(reference, _outputs(model, batches))
                h.remove()
                if d < best_d:
                    best, best_d = c, d
            silenced[best] = silence(*best)
            removed.append(best)
    finally:
        for h in silenced.values():
            h.remove()
        model.train(was_training)
    return removed


def prune_layers_(model: nn.Module, calibration: Any, n: int = 4, unit: str = "block",
                  progress: bool = False) -> list[Any]:
    """Remove ``n`` blocks (``unit="block"``, by ShortGPT's Block Influence) or ``n`` attention/MLP
    sublayers (``unit="sublayer"``, chosen greedily as FinerCut does) from a transformer, in place.

    ``calibration`` is one batch of model inputs (tensor of token ids, dict, tuple) or a list of them.
    Block removal updates ``config.num_hidden_layers`` (the model saves and reloads); a removed
    sublayer is replaced by a module that adds nothing to the residual stream (pre-norm models only).
    Returns the removed block indices, or (block, "attn"|"mlp") pairs."""
    if unit not in UNITS:
        raise ValueError(f"unit must be 'block' or 'sublayer', got {unit!r}")
    name, blocks = block_list(model)
    limit = len(blocks) - 1 if unit == "block" else 2 * len(blocks) - 1
    if not isinstance(n, int) or not 0 <= n <= limit:
        raise ValueError(f"n must be an int in [0, {limit}] for unit={unit!r} on {len(blocks)} blocks, got {n!r}")
    if unit == "sublayer" and not _is_pre_norm(model):
        raise ValueError("sublayer removal needs a pre-norm model (residual outside the sublayer, as in Llama or ViT); "
                         "BERT-style post-norm blocks normalize inside the sublayer: use unit='block'")
    if n == 0:
        return []
    if unit == "block":
        bi = block_influence(model, calibration, progress)
        drop = sorted(torch.argsort(bi, stable=True)[:n].tolist())
        _remove_blocks_(model, name, blocks, drop)
        return drop
    chosen = choose_sublayers(model, calibration, n, progress)
    for i, kind in chosen:
        attr, mod = (_attention_of if kind == "attn" else _mlp_of)(blocks[i])
        setattr(blocks[i], attr, _ZeroSublayer(returns_tuple=kind == "attn"))
    return chosen


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
    if config is not None:
        if hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(kept)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == len(blocks):
            config.layer_types = [t for i, t in enumerate(types) if i not in drop]
