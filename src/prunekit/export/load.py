"""Load any artifact prunekit writes or reads: a compressed-tensors sparse folder, a dense Hugging Face
folder, a GGUF file or a packaged alias (the last three through ``models.hf.load_model``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.hf import LoadedModel, load_model
from .compressed import is_compressed_folder, load_compressed


def load_artifact(spec: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The model and tokenizer behind ``spec``, on the CPU in eval mode, weights in ``dtype``.

    A compressed folder (``sparsity_config`` sparse-bitmask / sparse-24-bitmask) is decompressed here,
    since current compressed-tensors releases no longer read those layouts; everything else loads
    with transformers.
    """
    path = Path(str(spec)).expanduser()
    if path.is_dir() and is_compressed_folder(path):
        model, tokenizer = load_compressed(path, dtype)
        return LoadedModel(model, tokenizer, str(spec), True)
    return load_model(spec, dtype=dtype)


def load_and_run(spec: str | Path) -> LoadedModel:
    """:func:`load_artifact`, then one forward pass over 8 tokens, so that every weight is in memory
    (safetensors are memory-mapped: a weight not yet used may not be resident). What
    :func:`prunekit.metrics.memory.peak_load_memory` measures by default."""
    lm = load_artifact(spec)
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or 0)
    if lm.causal_lm and vocab:
        with torch.no_grad():
            lm.model(torch.arange(8).remainder(vocab).unsqueeze(0))
    return lm
