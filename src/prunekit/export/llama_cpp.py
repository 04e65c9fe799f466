"""llama.cpp's own tools, where they are built (``make llama-cpp``: scripts/build-llama-cpp.sh builds them
once from the llama.cpp that PyPI's ``llama-cpp-python`` source package vendors): the GGUF reader that
most users of a GGUF file run. prunekit never needs them; where they are built, a GGUF export is also
loaded and run by ``llama-simple`` before it reports success.

The tools are looked for in ``$PRUNEKIT_LLAMA_CPP/bin`` (default ``~/.cache/prunekit/llama.cpp/bin``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from torch import nn

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
