"""Artifacts users deploy: a pruned model saved where they run it, smaller on disk.

- ``safetensors``: a dense Hugging Face folder in the source's dtype (bf16 for a GGUF source);
- ``compressed``: the sparse Linear weights in a compressed-tensors layout (sparse-bitmask, or
  sparse-24-bitmask for 2:4), read back by :func:`load_artifact` (and by compressed-tensors ≤ 0.14);
- ``gguf``: a GGUF file (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, the source's own types, or a
  K-quant such as q4_K_M through llama.cpp's llama-quantize: :mod:`.kquant`) for llama.cpp-based runtimes (Llama/Mistral, per-layer widths as llama.cpp's ``deci``, Gemma 3); transformers
  reads it back with ``gguf_file=`` (a ``deci`` file: its tensors are read back with the ``gguf`` package).

    from prunekit.export import export
    export(model, tokenizer, "pruned/", {"to": "compressed"}, source="smollm2-135m")
    export(model, tokenizer, "pruned.gguf", {"to": "gguf", "quant": "q8_0"}, source="smollm2-135m")

Every check runs before anything is written; a failed export leaves nothing behind (files and folders
are written through :mod:`prunekit.infra.atomic`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..infra.atomic import OutputError, atomic_file, check_output_folder, output_folder
from ..infra.meta import write_meta
from .config import EXPORTERS, CompressedExport, ExportConfig, GGUFExport, SafetensorsExport
from .dtype import SaveDtype, resolve_dtype, source_dtype
from .load import load_artifact
from .readback import ReadBackError, read_back_gguf, read_back_gguf_tensors
from .kquant import check_quantizer, is_k_quant, write_k_quant
from .llama_cpp import read_back_llama_cpp
from .save import SavedModel, disk_errors, plan_save, save_model


@dataclass
class ExportReport:
    """What an export wrote: target kind, path, bytes of weights on disk, dtype and the details."""

    to: str
    path: str
    bytes: int
    dtype: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        what = self.detail.get("quant") or self.detail.get("layout") or self.dtype or ""
        head = f"exported {self.to} ({what}) to {self.path}: {self.bytes:,} bytes ({self.bytes / 1e6:,.1f} MB)"
        if self.dtype and self.detail.get("dtype_reason"):
            head += f"; dtype {self.dtype}: {self.detail['dtype_reason']}"
        checks = self.detail.get("read_back") or []
        checks = checks if isinstance(checks, list) else [checks]
        lines = [head]
        for rb in checks:
            if rb.get("reader"):
                lines.append(f"  read back with {rb['reader']}: max |Δ logit| {rb['max_abs_diff']:.1e} over "
                             f"{rb['tokens']} tokens (tolerance {rb['tolerance']:.1e})")
            elif rb.get("note"):
                lines.append(f"  {rb['note']}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def find_source_gguf(spec: str | os.PathLike | None) -> Path | None:
    """The GGUF file a model came from: ``spec`` itself (or its alias's file), or the source that a
    pruned folder's ``prunekit.json`` names; None when there is none."""
    if spec is None:
        return None
    from ..models.hf import resolve_model_path

    path = Path(str(spec)).expanduser()
    if path.is_dir():
        marker = path / "prunekit.json"
        if not marker.is_file():
            return None
        data = json.loads(marker.read_text())
        for key in ("source_path", "model"):
            if data.get(key):
                found = find_source_gguf(data[key]) if Path(str(data[key])) != path else None
                if found is not None:
                    return found
        return None
    try:
        resolved = resolve_model_path(str(spec))
    except (ValueError, FileNotFoundError):
        return None
    return resolved if resolved.is_file() and resolved.suffix == ".gguf" else None


def check_file_target(path: str | os.PathLike, overwrite: bool = False, needed_bytes: int | None = None) -> Path:
    """Raise an :class:`OutputError` now if file ``path`` cannot or may not be written."""
    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    if target.is_dir():
        raise OutputError(f"--out {target} is a folder; a GGUF export writes one file, e.g. --out pruned.gguf")
    if target.suffix != ".gguf":
        raise OutputError(f"--out {target} does not end in .gguf; name the file, e.g. --out pruned.gguf")
    if target.exists() and not overwrite:
        raise OutputError(f"--out {target} exists; pass --overwrite (overwrite=True) to replace it, or choose "
                          "another name")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"--out {target}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"--out {target}: the folder {parent} is not writable; choose a folder you can write")
    if needed_bytes is not None and shutil.disk_usage(parent).free < needed_bytes:
        raise OutputError(f"--out {target}: {parent} has {shutil.disk_usage(parent).free / 1e6:,.0f} MB free; "
                          f"about {needed_bytes / 1e6:,.0f} MB are needed")
    return target


def _gguf_bytes_estimate(model: nn.Module, quant: str) -> int:
    # a K-quant needs its f16 intermediate beside it too
    bits = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q5_0": 5.5, "q5_1": 6, "q4_0": 4.5, "q4_1": 5}.get(quant, 16 + 8)
    return int(sum(p.numel() for p in model.parameters()) * bits / 8 * 1.05)


def export(model: nn.Module, tokenizer: Any, out: str | os.PathLike,
           config: ExportConfig | Mapping[str, Any] | None = None, *, source: str | os.PathLike | None = None,
           overwrite: bool = False, meta: Mapping[str, Any] | None = None, description: str | None = None,
           progress: bool = False, **fields: Any) -> ExportReport:
    """Write ``model`` (and ``tokenizer``) to ``out`` as the config says (``to``: safetensors, compressed
    or gguf). ``source`` is where the model was loaded from (its dtype is the default; a GGUF source
    gives the tokenizer and, with ``quant="source"``, the tensor types). ``meta`` goes into the folder's
    ``prunekit.json``. The model is not changed."""
    if config is None and "to" not in fields:
        raise ValueError(f"export needs a target: to= one of {', '.join(EXPORTERS.names())}")
    cfg = EXPORTERS.parse_config(config if config is not None else {}, **fields)
    if isinstance(cfg, GGUFExport):
        from .gguf import plan_gguf, write_gguf

        target = check_file_target(out, overwrite, _gguf_bytes_estimate(model, cfg.quant))
        from .gguf_vocab import kept_token_ids

        keep = kept_token_ids(source) if source is not None and Path(str(source)).is_dir() else None
        if is_k_quant(cfg.quant):  # prunekit writes f16, llama.cpp's llama-quantize converts it
            check_quantizer()
            plan = plan_gguf(model, tokenizer, "f16", find_source_gguf(source), keep)
            with atomic_file(target) as tmp:
                detail = write_k_quant(model, plan, tmp, cfg.quant, target=target, description=description,
                                       progress=progress)
            return ExportReport("gguf", str(target), target.stat().st_size, None, detail, detail["notes"])
        plan = plan_gguf(model, tokenizer, cfg.quant, find_source_gguf(source), keep)
        with atomic_file(target) as tmp:
            with disk_errors(target):
                report = write_gguf(model, plan, tmp, description=description, progress=progress)
            detail = report.to_dict()
            if plan.transformers_reads:
                detail["read_back"] = [read_back_gguf(model, tmp, plan, target=target).to_dict()]
            else:
                detail["read_back"] = [read_back_gguf_tensors(model, tmp, plan, target=target)]
            llama = read_back_llama_cpp(model, tmp, plan, target=target)
            detail["read_back"].append(llama)
        detail["path"] = str(target)
        return ExportReport("gguf", str(target), target.stat().st_size, None, detail, list(report.notes))
    dtype = resolve_dtype(cfg.dtype, source)
    plan = plan_save(model, cfg.to, dtype)
    target = check_output_folder(out, overwrite)
    with output_folder(target, overwrite) as tmp:
        saved = save_model(model, tokenizer, tmp, cfg.to, dtype, plan, target=target)
        write_meta(tmp, {**dict(meta or {}), "export": cfg.to_dict(), "saved": saved.to_dict()})
    return ExportReport(cfg.to, str(target), saved.weight_bytes, saved.dtype, saved.to_dict(), [])


__all__ = ["CompressedExport", "EXPORTERS", "ExportConfig", "ExportReport", "GGUFExport", "ReadBackError",
           "SafetensorsExport",
           "SaveDtype", "SavedModel", "check_file_target", "export", "find_source_gguf", "load_artifact",
           "plan_save", "resolve_dtype", "save_model", "source_dtype"]
