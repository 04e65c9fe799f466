"""Protocol cards: everything that decides whether two results may be compared.

Perplexities differ with the sequence length, the split, the windows, the tokenizer, the library
version (wanda #45/#47, LLM-Pruner #34/#60, lm-eval #2301): a card records all of it, with hashes of
the very token tensors (or data indices) used. ``comparable_key`` is the part that must match for
two runs to share a table (the model, the evaluation data and the software and machine settings);
the calibration data, which a run may vary by seed, is recorded but not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__

_CHUNK = 1 << 20


def tensor_hash(t: torch.Tensor) -> str:
    """A hash of a tensor's dtype, shape and values."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """A fast fingerprint of a model file or folder: names, sizes and the first and last MiB of every
    file (hashing a 140 GB checkpoint whole would take minutes)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if path.is_dir() and (f.name.startswith(".") or f.name in ("report.txt",)):
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_CHUNK))
            if size > 2 * _CHUNK:
                fh.seek(-_CHUNK, os.SEEK_END)
                h.update(fh.read(_CHUNK))
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary and special tokens."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    blob = json.dumps({"vocab": sorted(vocab.items()), "special": str(getattr(tokenizer, "special_tokens_map", {}))})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """The versions of prunekit and of the libraries that change numbers."""
    out = {"prunekit": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "lm_eval"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return out


def machine(threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Threads, device and processor of the measurement."""
    return {"threads": threads or torch.get_num_threads(), "device": device or "cpu",
            "processor": platform.processor() or platform.machine(), "cores": os.cpu_count()}


COMPARABLE = ("task", "model", "model_hash", "tokenizer_hash", "evaluation", "data", "versions", "machine")


def comparable_key(card: dict[str, Any]) -> str:
    """A hash of the parts of a card that must match for two runs to be compared."""
    part = {k: card.get(k) for k in COMPARABLE}
    if card.get("macs_counter") is not None:  # MACs counted by different counters do not compare (cards without
        part["macs_counter"] = card["macs_counter"]  # MACs keep the key they always had)
    versions_ = dict(part.get("versions") or {})
    versions_.pop("python", None)
    part["versions"] = versions_
    machine_ = dict(part.get("machine") or {})
    part["machine"] = {k: machine_.get(k) for k in ("threads", "device")}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]


SEED_FIELDS = {"data": ("seed", "train_indices_hash"), "calibration": ("seed", "tokens_hash")}


def seedless_key(card: dict[str, Any]) -> str:
    """The comparable key of a card with the parts a seed draws left out (the training subset's seed and
    indices, the calibration sample's): runs that share it differ only by seed, so their figures can be
    averaged over seeds."""
    trimmed = dict(card)
    for part, fields in SEED_FIELDS.items():
        if isinstance(trimmed.get(part), dict):
            trimmed[part] = {k: v for k, v in trimmed[part].items() if k not in fields}
    return comparable_key(trimmed)


def card_hash(card: dict[str, Any]) -> str:
    """A hash of the whole card."""
    return hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:16]
