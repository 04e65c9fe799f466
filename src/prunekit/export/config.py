"""Typed configs of the export step, one per target, registered by the name in their ``to`` field
(``EXPORTERS.parse_config({"to": "gguf", "quant": "q8_0"})``), so a recipe stage can hold one."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from ..core.config import Config
from ..core.registry import Registry
from .dtype import DTYPE_CHOICES, parse_dtype
from .gguf import parse_quant

DtypeName = str


def _check_dtype(value: str) -> str:
    if str(value).lower() == "auto":
        return "auto"
    return str(parse_dtype(value)).removeprefix("torch.")


class SafetensorsExport(Config):
    """A dense Hugging Face folder (``model.safetensors``) in ``dtype`` (``auto``: the source's)."""

    to: Literal["safetensors"] = "safetensors"
    dtype: DtypeName = "auto"

    _dtype = field_validator("dtype")(classmethod(lambda cls, v: _check_dtype(v)))


class CompressedExport(Config):
    """A Hugging Face folder whose sparse Linear weights are stored in a compressed-tensors sparse layout
    (sparse-bitmask, or sparse-24-bitmask when every weight is 2:4), values in ``dtype``."""

    to: Literal["compressed"] = "compressed"
    dtype: DtypeName = "auto"

    _dtype = field_validator("dtype")(classmethod(lambda cls, v: _check_dtype(v)))


class GGUFExport(Config):
    """A GGUF file for llama.cpp-based runtimes; ``quant`` is the type of the 2-D tensors (``source``: the
    source GGUF's own per-tensor types)."""

    to: Literal["gguf"] = "gguf"
    quant: str = "q8_0"

    _quant = field_validator("quant")(classmethod(lambda cls, v: parse_quant(v)))


ExportConfig = SafetensorsExport | CompressedExport | GGUFExport
EXPORTERS: Registry[str] = Registry("export target", key="to")
EXPORTERS.add("safetensors", "folder", config=SafetensorsExport)
EXPORTERS.add("compressed", "folder", config=CompressedExport)
EXPORTERS.add("gguf", "file", config=GGUFExport)

__all__ = ["CompressedExport", "DTYPE_CHOICES", "EXPORTERS", "ExportConfig", "GGUFExport", "SafetensorsExport"]
