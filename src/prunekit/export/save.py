"""Write a (pruned) Hugging Face model into a folder: dense safetensors or the compressed-tensors sparse
layouts, in the dtype the user expects, with its tokenizer; report the bytes that landed on disk.

These functions write into a folder the caller owns (for the CLI, the temporary folder of
``core.atomic.output_folder``, which is swapped into place only when everything is written).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .dtype import SaveDtype
from ..metrics.size import weight_bytes

SAVE_FORMATS = ("safetensors", "compressed")
MAX_SHARD_BYTES = 5 * 1024**3


@dataclass
class SavedModel:
    """What was written: format, dtype (and why), the weight files and their bytes on disk."""

    format: str
    dtype: str
    dtype_reason: str
    weight_bytes: int
    files: list[str] = field(default_factory=list)
    layout: str | None = None
    compressed_modules: int = 0
    dense_modules: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        what = f"{self.format} ({self.layout})" if self.layout else self.format
        return f"saved {what}, {self.dtype} ({self.dtype_reason}): {self.weight_bytes / 1e6:,.1f} MB of weights"


def cast_state_dict(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Floating tensors in ``dtype``, others as they are; tensors that shared storage still do (so that
    tied weights are still recognised as tied)."""
    memo: dict[tuple[int, torch.dtype, tuple[int, ...]], Tensor] = {}
    out = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point() or t.dtype == dtype:
            out[key] = t
            continue
        k = (t.data_ptr(), t.dtype, tuple(t.shape))
        if k not in memo:
            memo[k] = t.to(dtype)
        out[key] = memo[k]
    return out


def drop_tied(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Without the weights the model ties to an earlier one on loading (a tied LM head)."""
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return dict(state)
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = {}
    for key, t in state.items():
        k = (t.data_ptr(), tuple(t.shape))
        if k in seen:
            continue
        seen.add(k)
        out[key] = t
    return out


def _write_config(model: nn.Module, folder: Path, dtype: SaveDtype, extra: Mapping[str, Any] | None = None) -> None:
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None and hasattr(model, "can_generate") and model.can_generate():
        model.generation_config.save_pretrained(str(folder))
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = dtype.name
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    config.update(extra or {})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_safetensors(tensors: dict[str, Tensor], folder: Path) -> list[str]:
    """One ``model.safetensors``, or shards of at most 5 GiB with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += n
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


def check_save_format(fmt: str) -> str:
    """A save format name, checked (``safetensors`` or ``compressed``)."""
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"format {fmt!r} is not one prunekit saves a folder in; expected {', '.join(SAVE_FORMATS)} "
                         "(for GGUF use 'prunekit export FOLDER --to gguf')")
    return fmt


def plan_save(model: nn.Module, fmt: str, dtype: SaveDtype):
    """Every check a save needs, before anything is written; returns the compression plan (or None)."""
    check_save_format(fmt)
    if not hasattr(model, "config") or not hasattr(model.config, "save_pretrained"):
        raise ValueError(f"{type(model).__name__} is not a Hugging Face model (no config): save its weights with "
                         "prunekit.save_sparse instead")
    if fmt == "compressed":
        from .compressed import plan_compression

        return plan_compression(model, dtype.dtype)
    return None


def save_model(model: nn.Module, tokenizer: Any, folder: str | Path, fmt: str, dtype: SaveDtype,
               plan: Any = None) -> SavedModel:
    """Write ``model`` (masks baked in, floats in ``dtype``) and ``tokenizer`` into ``folder`` as ``fmt``.

    The in-memory model is not changed (its weights are cast into a copy). ``plan`` is what
    :func:`plan_save` returned (it is computed here when not given).
    """
    from ..core.sparse_io import effective_state_dict

    folder = Path(folder)
    if plan is None:
        plan = plan_save(model, fmt, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    state = cast_state_dict(effective_state_dict(model), dtype.dtype)
    if fmt == "safetensors":
        model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        _write_config(model, folder, dtype)
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        saved = SavedModel("safetensors", dtype.name, dtype.reason, weight_bytes(folder), files)
    else:
        from .compressed import compress_state_dict, quantization_config

        tensors = compress_state_dict(drop_tied(state, model), plan, dtype.dtype)
        files = _write_safetensors(tensors, folder)
        _write_config(model, folder, dtype, {"quantization_config": quantization_config(plan)})
        saved = SavedModel("compressed", dtype.name, dtype.reason, weight_bytes(folder), files, plan.format,
                           len(plan.compressed), len(plan.ignored))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return saved
