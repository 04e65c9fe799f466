"""Bytes on disk of a saved model: the weight files a user ships (safetensors shards, a GGUF file)."""

from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def weight_bytes(path: str | Path) -> int:
    """Size in bytes of a model's weights: the file itself, or the weight files in a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def folder_bytes(path: str | Path) -> int:
    """Size in bytes of every file under ``path`` (weights, tokenizer, config, reports)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
