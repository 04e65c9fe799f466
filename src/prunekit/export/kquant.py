"""K-quant GGUF files (``q4_K_M``, ``q5_K_S``, ``q6_K``, …): the types most llama.cpp users deploy, which the
``gguf`` package cannot write. prunekit writes the model as f16 with its own writer (every check of
:func:`prunekit.export.gguf.plan_gguf` applies), converts that file with llama.cpp's own ``llama-quantize``
(built by ``make llama-cpp``), and reads the result back before it is renamed onto the target:

- every tensor, dequantized with the ``gguf`` package, must lie within its type's error bound of the weight
  (:data:`RELATIVE_RMS_BOUND`: relative RMS error; a wrong permutation or a swapped tensor is far outside it),
  and the per-layer widths must be the plan's;
- transformers' GGUF reader (where it builds the architecture) must give the logits of the model whose weights
  are the file's dequantized tensors;
- ``llama-simple`` must load and run it.

The f16 intermediate is a temporary beside the target (named like the target's own temporary, so a run killed
mid-write leaves nothing that the next run does not remove), deleted in every case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .llama_cpp import llama_cpp_home, llama_cpp_tool, quantize_gguf
from .quant_names import K_QUANTS

# The largest relative RMS error (‖dequant(q(w)) − w‖ / ‖w‖) a tensor stored in each type may show against the
# f16 weight. Block quantization of Gaussian weights gives about 0.005 (Q8_0), 0.02 (Q6_K), 0.04 (5-bit),
# 0.08–0.1 (4-bit), 0.17 (Q3_K) and 0.35 (Q2_K); SmolLM2-135M through llama-quantize measured at most 0.0065
# (Q8_0), 0.018 (Q6_K), 0.053 (Q5_*), 0.10 (Q4_0), 0.16 (Q3_K). The bounds leave about 2× for heavy-tailed
# weights and stay far below the √2 ≈ 1.41 of a row-permuted or swapped tensor, which is what they catch.
RELATIVE_RMS_BOUND = {"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.03, "Q6_K": 0.08, "Q5_K": 0.15, "Q5_0": 0.15,
                      "Q5_1": 0.15, "Q4_K": 0.3, "Q4_0": 0.3, "Q4_1": 0.3, "Q3_K": 0.5, "Q2_K": 0.8}


def is_k_quant(name: str) -> bool:
    """Whether ``name`` is a llama-quantize K-quant type (any case)."""
    return str(name).strip().lower() in K_QUANTS


def check_quantizer() -> Path:
    """The ``llama-quantize`` binary, or one clear error saying how to build it (before anything is written)."""
    tool = llama_cpp_tool("llama-quantize")
    if tool is None:
        raise FileNotFoundError(f"--quant K-quants are written by llama.cpp's llama-quantize, which is not built in "
                                f"{llama_cpp_home() / 'bin'}; run 'make llama-cpp' once (or choose q8_0, q4_0, …)")
    return tool


def check_tensors(model: nn.Module, path: Path, plan: Any, where: Path) -> tuple[dict[str, int], float, dict]:
    """Every tensor of the K-quant file within its type's bound of the model's weight, and the per-layer widths
    the plan's. Returns (tensors per type, the worst relative RMS error, key → stored tensor)."""
    from ..core.sparse_io import effective_state_dict
    from .readback import ReadBackError, check_widths, file_tensors

    stored = file_tensors(path, plan, where)
    state = effective_state_dict(model)
    types: dict[str, int] = {}
    worst = 0.0
    for key, (qtype, back) in stored.items():
        types[qtype] = types.get(qtype, 0) + 1
        want = state[key].detach().to(torch.float32)
        norm = float(want.norm())
        err = float((back - want).norm()) / norm if norm > 0 else float((back - want).abs().max())
        bound = RELATIVE_RMS_BOUND.get(qtype, 0.8)
        if not (math.isfinite(err) and err <= bound):
            raise ReadBackError(f"the GGUF file ({plan.quant}) was written but its {key} ({qtype}) reads back with a "
                                f"relative error of {err:.3g} (a {qtype} tensor stays within {bound}); nothing was "
                                f"saved at {where}")
        worst = max(worst, err)
    check_widths(path, plan, where)
    return types, worst, {k: t for k, (_, t) in stored.items()}


def _as_stored(stored: dict[str, Tensor]) -> Callable[[str, Tensor], Tensor]:
    def round_(key: str, t: Tensor) -> Tensor:
        return stored[key].to(t.dtype) if key in stored else t

    return round_


def write_k_quant(model: nn.Module, plan: Any, tmp: Path, quant: str, *, target: Path, description: str | None,
                  progress: bool, threads: int = 1) -> dict[str, Any]:
    """Write ``model`` as the K-quant ``quant`` at ``tmp`` (the atomic temporary of ``target``) from the f16
    ``plan``, and read it back (module docstring). Returns the export's detail; raises
    :class:`prunekit.export.readback.ReadBackError` (or llama-quantize's RuntimeError) with nothing left."""
    from .gguf import write_gguf
    from .llama_cpp import read_back_llama_cpp
    from .readback import read_back_gguf
    from .save import disk_errors

    kind = quant.upper()
    f16 = tmp.with_name(tmp.stem + "-f16.gguf")
    try:
        with disk_errors(target):
            report = write_gguf(model, plan, f16, description=description, progress=progress)
            tmp.unlink(missing_ok=True)  # llama-quantize writes a new file
            q = quantize_gguf(f16, tmp, kind, threads=threads)
    finally:
        with contextlib.suppress(FileNotFoundError):
            f16.unlink()
    plan_k = dataclasses.replace(plan, quant=quant)
    types, worst, stored = check_tensors(model, tmp, plan_k, target)
    checks: list[dict[str, Any]] = [{"note": f"read back with gguf.GGUFReader: {len(stored)} tensors within their "
                                             f"type's error bound (worst relative RMS error {worst:.3f}) and the "
                                             "per-layer widths as planned"}]
    if plan.transformers_reads:
        checks.append(read_back_gguf(model, tmp, plan_k, target=target, round_=_as_stored(stored)).to_dict())
    checks.append(read_back_llama_cpp(model, tmp, plan_k, target=target))
    notes = list(report.notes)
    if q.fallbacks:
        notes.append(f"llama-quantize stored {len(q.fallbacks)} of {len(stored)} tensors in another type than {kind}: "
                     f"their rows do not divide into its 256-wide blocks (e.g. {q.fallbacks[0]})")
    return {**report.to_dict(), "quant": quant, "bytes": tmp.stat().st_size, "types": types, "path": str(target),
            "read_back": checks, "notes": notes,
            "llama_quantize": {"type": q.type, "seconds": q.seconds, "fallbacks": q.fallbacks}}
