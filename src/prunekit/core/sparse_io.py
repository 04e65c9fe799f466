"""Saving a pruned model's weights compactly: each floating tensor is stored dense or as a bitmask
plus its non-zero values, whichever is smaller, in a safetensors file; loading gives the exact
tensors back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .stats import sparse_nbytes

_FORMAT = "prunekit-sparse-v1"


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict the model would have after ``finalize_``: masked weights with their zeros, no masks."""
    from .mask import masked_modules

    state = dict(model.state_dict())
    for name, module in masked_modules(model):
        prefix = f"{name}." if name else ""
        state.pop(f"{prefix}parametrizations.weight.original", None)
        state.pop(f"{prefix}parametrizations.weight.0.mask", None)
        state[f"{prefix}weight"] = module.weight.detach()
    return state


def save_sparse(model_or_state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> int:
    """Write the (effective) weights to ``path`` compactly; returns the file's size in bytes.

    The file is written to a temporary name and renamed, so a failure never leaves a partial file.
    """
    state = effective_state_dict(model_or_state) if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    tensors: dict[str, Tensor] = {}
    layout: dict[str, dict] = {}
    for key, t in state.items():
        if "::" in key:
            raise ValueError(f"tensor names may not contain '::' (got {key!r})")
        t = t.detach().cpu().contiguous()
        if t.is_floating_point() and sparse_nbytes(t) < t.numel() * t.element_size():
            nz = (t != 0).reshape(-1)
            tensors[f"{key}::bits"] = torch.from_numpy(np.packbits(nz.numpy()))
            tensors[f"{key}::values"] = t.reshape(-1)[nz].clone()
            layout[key] = {"format": "bitmask", "shape": list(t.shape)}
        else:
            tensors[key] = t.clone()
            layout[key] = {"format": "dense"}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": _FORMAT, "layout": json.dumps(layout)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file written by :func:`save_sparse` back into a dense state dict, exactly."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a prunekit sparse file (format {meta.get('format')!r})")
        layout = json.loads(meta["layout"])
        out = {}
        for key, info in layout.items():
            if info["format"] == "dense":
                out[key] = f.get_tensor(key)
                continue
            values = f.get_tensor(f"{key}::values")
            bits = f.get_tensor(f"{key}::bits").numpy()
            numel = int(np.prod(info["shape"]))
            nz = torch.from_numpy(np.unpackbits(bits, count=numel).astype(bool))
            dense = torch.zeros(numel, dtype=values.dtype)
            dense[nz] = values
            out[key] = dense.reshape(info["shape"])
    return out
