"""Saving a pruned model's weights compactly: each floating tensor is stored dense or as a bitmask
plus its non-zero values, whichever is smaller, in a safetensors file; loading gives the exact
tensors back."""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..infra.atomic import atomic_file
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


def _crc(t: Tensor) -> int:
    """CRC-32 of a tensor's bytes (any dtype)."""
    t = t.detach().cpu().contiguous()
    return zlib.crc32(memoryview(t.reshape(-1).view(torch.uint8).numpy())) if t.numel() else 0


def save_sparse(model_or_state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> int:
    """Write the (effective) weights to ``path`` compactly; returns the file's size in bytes.

    Each tensor's layout records its shape, count of non-zeros and a CRC-32 of its stored bytes,
    which :func:`load_sparse` verifies. The file is written under a unique temporary name beside
    ``path`` and renamed (with the user's umask permissions), so a failure never leaves a partial file.
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
            bits = torch.from_numpy(np.packbits(nz.numpy()))
            values = t.reshape(-1)[nz].clone()
            tensors[f"{key}::bits"] = bits
            tensors[f"{key}::values"] = values
            layout[key] = {"format": "bitmask", "shape": list(t.shape), "nonzeros": int(values.numel()),
                           "crc32": [_crc(bits), _crc(values)]}
        else:
            tensors[key] = t.clone()
            layout[key] = {"format": "dense", "crc32": [_crc(t)]}
    target = Path(path)
    with atomic_file(target) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _FORMAT, "layout": json.dumps(layout)})
    return target.stat().st_size


class SparseFileError(ValueError):
    """A sparse file that is corrupt, truncated, or not written by :func:`save_sparse`."""


def _bad(path: Any, what: str) -> SparseFileError:
    return SparseFileError(f"{path}: {what}; the file is corrupt or was not written by prunekit.save_sparse. "
                           "Save the model again")


def _check_layout(path: Any, layout: Any, names: set[str], shapes: Mapping[str, list[int]],
                  dtypes: Mapping[str, str]) -> None:
    """Every declared tensor is in the file with sizes its bitmask can hold, before anything is allocated."""
    if not isinstance(layout, dict):
        raise _bad(path, "its layout is not a mapping")
    expected: set[str] = set()
    for key, info in layout.items():
        fmt = info.get("format") if isinstance(info, dict) else None
        if fmt == "dense":
            expected.add(key)
            continue
        if fmt != "bitmask":
            raise _bad(path, f"tensor {key!r} has an unknown layout {info!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise _bad(path, f"tensor {key!r} declares an invalid shape {shape!r}")
        numel = math.prod(shape)
        bits, values = f"{key}::bits", f"{key}::values"
        for name in (bits, values):
            if name not in names:
                raise _bad(path, f"tensor {key!r} lacks its part {name!r}")
            if dtypes[name] != ("U8" if name == bits else dtypes[values]) or len(shapes[name]) != 1:
                raise _bad(path, f"{name!r} is not a flat tensor of the expected type ({dtypes[name]} {shapes[name]})")
        if shapes[bits][0] != (numel + 7) // 8:
            raise _bad(path, f"tensor {key!r} declares shape {shape} ({numel:,} entries) but its bitmask holds "
                             f"{shapes[bits][0] * 8:,}")
        nnz = shapes[values][0]
        if nnz > numel or info.get("nonzeros", nnz) != nnz:
            raise _bad(path, f"tensor {key!r} stores {nnz:,} values for {numel:,} entries "
                             f"(declared non-zeros {info.get('nonzeros')})")
        expected |= {bits, values}
    if expected != names:
        extra, missing = sorted(names - expected), sorted(expected - names)
        raise _bad(path, f"its layout does not match its tensors (undeclared {extra}, missing {missing})")


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file written by :func:`save_sparse` back into a dense state dict, exactly.

    Declared shapes and counts are checked against the stored bitmasks (and so against the file's
    size) before anything is allocated, and each tensor's CRC-32 is verified; a file written before
    checksums existed loads with a warning. Problems raise :class:`SparseFileError` (a ValueError).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) on bad headers
        raise _bad(path, f"it is not a readable safetensors file ({exc})") from None
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a prunekit sparse file (format {meta.get('format')!r}); "
                             "expected a file written by prunekit.save_sparse")
        try:
            layout = json.loads(meta.get("layout", ""))
        except ValueError:
            raise _bad(path, "its layout metadata is not JSON") from None
        names = set(f.keys())
        slices = {name: f.get_slice(name) for name in names}
        shapes = {name: list(sl.get_shape()) for name, sl in slices.items()}
        dtypes = {name: sl.get_dtype() for name, sl in slices.items()}
        _check_layout(path, layout, names, shapes, dtypes)
        unchecked = [k for k, info in layout.items() if "crc32" not in info]
        if unchecked:
            warnings.warn(f"{path} carries no checksums (written by an older prunekit); its {len(unchecked)} "
                          "tensors load unverified. Save it again to add them", stacklevel=2)
        out = {}
        for key, info in layout.items():
            names_of = [key] if info["format"] == "dense" else [f"{key}::bits", f"{key}::values"]
            parts = [f.get_tensor(name) for name in names_of]
            if "crc32" in info and [_crc(p) for p in parts] != list(info["crc32"]):
                raise _bad(path, f"tensor {key!r} fails its checksum")
            if info["format"] == "dense":
                out[key] = parts[0]
                continue
            bits, values = parts
            numel = math.prod(info["shape"])
            nz = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
            if int(nz.sum()) != values.numel():
                raise _bad(path, f"tensor {key!r}'s bitmask marks {int(nz.sum()):,} entries for "
                                 f"{values.numel():,} stored values")
            dense = torch.zeros(numel, dtype=values.dtype)
            dense[nz] = values
            out[key] = dense.reshape(info["shape"])
    return out
