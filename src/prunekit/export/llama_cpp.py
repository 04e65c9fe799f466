"""llama.cpp's own tools, where they are built (``make llama-cpp``: scripts/build-llama-cpp.sh builds them
once from the llama.cpp that PyPI's ``llama-cpp-python`` source package vendors): the GGUF reader that
most users of a GGUF file run. prunekit never needs them; where they are built, a GGUF export is also
loaded and run by ``llama-simple`` before it reports success.

The tools are looked for in ``$PRUNEKIT_LLAMA_CPP/bin`` (default ``~/.cache/prunekit/llama.cpp/bin``).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .quant_names import K_QUANT_TYPES  # llama-quantize's K-quant types: what the gguf package cannot write

ENV = "PRUNEKIT_LLAMA_CPP"


def llama_cpp_home() -> Path:
    """Where ``make llama-cpp`` puts the tools (``$PRUNEKIT_LLAMA_CPP``, else ``~/.cache/prunekit/llama.cpp``)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "prunekit" / "llama.cpp"


def llama_cpp_tool(name: str) -> Path | None:
    """The path of a built llama.cpp tool (``llama-simple``, ``llama-perplexity``, …), or None."""
    path = llama_cpp_home() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def llama_cpp_version() -> str:
    """What the built tools came from (``llama-cpp-python 0.3.36``), or ``llama.cpp``."""
    marker = llama_cpp_home() / "bin" / "VERSION"
    return marker.read_text().strip() if marker.is_file() else "llama.cpp"


def run_simple(path: str | Path, prompt: str = "The", n_predict: int = 4, timeout: float = 300) -> str:
    """``llama-simple -m PATH -n N PROMPT`` (greedy): its stdout (prompt and continuation). Raises a
    RuntimeError with llama.cpp's last lines when it cannot load or run the file."""
    tool = llama_cpp_tool("llama-simple")
    if tool is None:
        raise FileNotFoundError(f"llama-simple is not built in {llama_cpp_home() / 'bin'}; run 'make llama-cpp'")
    proc = subprocess.run([str(tool), "-m", str(path), "-n", str(n_predict), prompt], capture_output=True,
                          text=True, errors="replace", timeout=timeout)  # a continuation may be any bytes
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()][-2:]
        raise RuntimeError(f"llama.cpp ({llama_cpp_version()}) could not run {path}: {' | '.join(tail)}")
    return proc.stdout




def k_quant_type(name: str) -> str:
    """``name`` as llama-quantize spells the K-quant (``q4_k_m`` → ``Q4_K_M``); one clear error for another name."""
    key = str(name).strip().upper()
    if key not in K_QUANT_TYPES:
        raise ValueError(f"unknown K-quant {name!r}; llama-quantize's are {', '.join(K_QUANT_TYPES)}")
    return key


@dataclass
class Quantized:
    """What ``llama-quantize`` did: the file written, its type, and the tensors it wrote in another type than asked
    (``fallbacks``: its warnings, one per tensor whose rows the type's blocks do not divide)."""

    path: str
    type: str
    fallbacks: list[str]
    seconds: float


_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s*(\d+) \(required for type\s*(\S+)\).*?"
                       r"falling back to\s*(\S+)")


def quantize_gguf(src: str | Path, dst: str | Path, type_: str, threads: int = 1, timeout: float = 3600) -> Quantized:
    """``llama-quantize SRC DST TYPE THREADS``: llama.cpp's own quantizer, for the types the ``gguf`` package cannot
    write (the K-quants: q4_K_M, q5_K_S, q6_K, …). ``dst`` must not exist. Raises a RuntimeError with llama.cpp's
    last lines when it fails; the fallbacks it warned about are returned (rows that 256 does not divide go into a
    32-block type: see :mod:`prunekit.shrink.search`)."""
    import time

    tool = llama_cpp_tool("llama-quantize")
    if tool is None:
        raise FileNotFoundError(f"llama-quantize is not built in {llama_cpp_home() / 'bin'}; run 'make llama-cpp'")
    if Path(dst).exists():
        raise FileExistsError(f"{dst} exists; llama-quantize writes a new file")
    t0 = time.perf_counter()
    proc = subprocess.run([str(tool), str(src), str(dst), str(type_), str(threads)], capture_output=True, text=True,
                          errors="replace", timeout=timeout)
    if proc.returncode != 0:
        Path(dst).unlink(missing_ok=True)
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()][-2:]
        raise RuntimeError(f"llama-quantize ({llama_cpp_version()}) could not write {type_}: {' | '.join(tail)}")
    log = proc.stdout + "\n" + proc.stderr
    fallbacks = [f"{m.group(1)}: {m.group(2)} columns, {m.group(4)} → {m.group(5)}" for m in _FALLBACK.finditer(log)]
    return Quantized(str(dst), str(type_), fallbacks, time.perf_counter() - t0)


def read_back_llama_cpp(model: nn.Module, path: str | Path, plan: Any, *, target: str | Path | None = None) -> dict:
    """Where llama.cpp is built: load and run the GGUF file with ``llama-simple`` (raises
    :class:`prunekit.export.readback.ReadBackError` when it cannot); else say it was not checked."""
    from .readback import ReadBackError

    if llama_cpp_tool("llama-simple") is None:
        return {"note": f"not run with llama.cpp: not built here ('make llama-cpp' builds it into "
                        f"{llama_cpp_home() / 'bin'})"}
    try:
        run_simple(path)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise ReadBackError(f"the GGUF file ({plan.quant}) was written but {exc}; nothing was saved at "
                            f"{target or path}") from exc
    return {"note": f"loaded and ran with llama.cpp ({llama_cpp_version()}: llama-simple)"}
