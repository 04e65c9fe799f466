"""The dtype a saved model gets: the one its source was in, unless the user names another.

A Hugging Face folder declares its dtype in ``config.json`` (``dtype``, or ``torch_dtype`` before
transformers 5); a GGUF file holds quantized blocks that are dequantized on loading, and is saved as
bfloat16 (what llama.cpp's own converter and most published checkpoints use). prunekit computes in
float32 while pruning; casting to the save dtype keeps every zero a zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
           "half": "float16"}
DTYPE_CHOICES = ("auto", *DTYPES)


@dataclass(frozen=True)
class SaveDtype:
    """The dtype to save in and why (``reason`` is printed in the report)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` (or ``bf16``, ``float16``/``fp16``, ``float32``/``fp32``) → the torch dtype."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one prunekit saves in; expected auto, {', '.join(DTYPES)} "
                         "(or bf16, fp16, fp32)")
    return DTYPES[key]


def source_dtype(source: str | Path) -> SaveDtype:
    """The dtype a user expects for a model loaded from ``source`` (an alias, HF folder or GGUF file)."""
    from ..models.hf import resolve_model_path

    path = resolve_model_path(source)
    if path.is_file():
        return SaveDtype(torch.bfloat16, f"source is a GGUF file ({path.name}), dequantized; saved as bfloat16")
    config = json.loads((path / "config.json").read_text())
    declared = config.get("dtype") or config.get("torch_dtype")
    if declared is None:
        return SaveDtype(torch.float32, "the source's config.json names no dtype; saved as float32")
    declared = str(declared).removeprefix("torch.")
    if declared not in DTYPES:
        return SaveDtype(torch.float32, f"the source's config.json names dtype {declared!r}; saved as float32")
    return SaveDtype(DTYPES[declared], f"the source's config.json says dtype {declared}")


def resolve_dtype(requested: str | None, source: str | Path | None) -> SaveDtype:
    """``requested`` (``auto``/None: the source's dtype, float32 when the source is unknown)."""
    if requested is not None and str(requested).lower() != "auto":
        dtype = parse_dtype(requested)
        return SaveDtype(dtype, f"--dtype {str(dtype).removeprefix('torch.')} as asked")
    if source is None:
        return SaveDtype(torch.float32, "source unknown; saved as float32")
    return source_dtype(source)
