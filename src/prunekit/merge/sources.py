"""Where the tensors come from and go to: a Hugging Face folder of safetensors read one tensor at a time,
a streaming safetensors writer, and the checks that the models can be merged at all.

Reading opens the file for each tensor, so only the tensors in use are resident (a file kept open
with ``safe_open`` maps every page it has read, and the process's memory grows to the file's size).
Writing lays out the header first (the shapes and dtypes are the base's) and then streams each
tensor's bytes, so the output never has to be held in memory either.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import torch
from torch import Tensor

from ..infra.shards import SAFETENSORS_INDEX as INDEX
from ..infra.shards import SINGLE, index_entries, safetensors_files
from .tensors import dtype_kind

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        _key = "F8_E4M3" if "e4m3" in _name else "F8_E5M2"
        _DTYPES[_key] = getattr(torch, _name)
        _NAMES[getattr(torch, _name)] = _key


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, dtype, shape and the file (relative to its folder) that holds it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class TensorFolder:
    """The safetensors weights of a Hugging Face model folder, read one tensor at a time."""

    def __init__(self, folder: str | Path, label: str | None = None) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        self.label = label or str(folder)
        self.index = index_entries(self.folder)  # the shard map, every file checked to stay in the folder
        files = safetensors_files(self.folder, self.label)
        self.files = files
        self.infos: dict[str, TensorInfo] = {}
        self.file_metadata: dict[str, dict[str, str]] = {}
        for f in files:
            with safe_open(str(self.folder / f), framework="pt") as handle:
                self.file_metadata[f] = dict(handle.metadata() or {})
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    dtype = _DTYPES.get(sl.get_dtype())
                    if dtype is None:
                        raise ValueError(f"{self.label}: tensor {name!r} has dtype {sl.get_dtype()}, which prunekit cannot merge")
                    self.infos[name] = TensorInfo(name, dtype, tuple(sl.get_shape()), f)
        cfg = self.folder / "config.json"
        self.config: dict[str, Any] = json.loads(cfg.read_text()) if cfg.is_file() else {}

    def names(self) -> list[str]:
        """Tensor names, in a fixed (sorted) order."""
        return sorted(self.infos)

    def get(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        """One tensor, or its rows ``[start, stop)`` along dim 0 (the file is opened for it and closed again)."""
        from safetensors import safe_open

        info = self.infos[name]
        with safe_open(str(self.folder / info.file), framework="pt") as handle:
            if start is None or len(info.shape) <= 1:
                return handle.get_tensor(name)
            return handle.get_slice(name)[start:stop]

    def reader(self, name: str):
        """A function ``(start, stop) -> rows`` of tensor ``name``."""
        return lambda start, stop: self.get(name, start, stop)


class SafetensorsWriter:
    """Writes one safetensors file whose header (names, dtypes, shapes) is known up front, tensor by tensor."""

    def __init__(self, path: str | Path, infos: list[TensorInfo], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.order = [i.name for i in infos]
        self.infos = {i.name: i for i in infos}
        header: dict[str, Any] = {}
        offset = 0
        for i in infos:
            size = i.numel * torch.empty(0, dtype=i.dtype).element_size()
            header[i.name] = {"dtype": _NAMES[i.dtype], "shape": list(i.shape), "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh: BinaryIO = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: Tensor | Iterable[Tensor]) -> None:
        """Append the next tensor (in the order given at creation), whole or as consecutive row groups along
        dim 0, checking its dtype and shape."""
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise ValueError(f"{self.path.name}: expected tensor {expected!r} next, got {name!r}")
        info = self.infos[name]
        parts = [tensor] if isinstance(tensor, Tensor) else tensor
        written = 0
        for part in parts:
            whole = tuple(part.shape) == info.shape
            if part.dtype != info.dtype or not (whole or (part.dim() == len(info.shape) and
                                                          tuple(part.shape[1:]) == info.shape[1:])):
                raise ValueError(f"{name}: expected {info.dtype} {info.shape}, got {part.dtype} {tuple(part.shape)}")
            data = part.detach().cpu().contiguous().reshape(-1)
            if data.numel():
                self._fh.write(data.view(torch.uint8).numpy().data)
            written += data.numel()
        if written != info.numel:
            raise ValueError(f"{name}: {written} entries written, its shape {info.shape} holds {info.numel}")
        self._next += 1

    def close(self) -> None:
        """Finish the file; an error when a tensor of the header was never written."""
        self._fh.close()
        if self._next != len(self.order):
            raise ValueError(f"{self.path.name}: {len(self.order) - self._next} tensors were never written")


# ---------------------------------------------------------------------------------------------------------
# Checks before merging

_ARCH_KEYS = ("model_type", "architectures")
_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads")


def _embedding_names(names: list[str]) -> list[str]:
    return [n for n in names if "embed" in n or n.endswith(("wte.weight", "lm_head.weight"))]


def _tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text())
        vocab = dict((data.get("model") or {}).get("vocab") or {})
        if isinstance(vocab, list):  # unigram: [[piece, score], ...]
            vocab = {p[0]: i for i, p in enumerate(vocab)}
        for tok in data.get("added_tokens") or []:
            vocab[tok["content"]] = tok["id"]
        return vocab
    vj = folder / "vocab.json"
    if vj.is_file():
        return json.loads(vj.read_text())
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_mergeable(base: TensorFolder, models: list[TensorFolder]) -> list[str]:
    """Raise a ValueError when the models cannot be merged into the base (architecture, vocabulary, tensor
    names or shapes differ); return notes about what could not be compared."""
    notes: list[str] = []
    problems: list[str] = []
    for m in models:
        for key in _ARCH_KEYS + _SHAPE_KEYS:
            a, b = base.config.get(key), m.config.get(key)
            if a is not None and b is not None and a != b:
                what = "architectures differ" if key in _ARCH_KEYS else "configurations differ"
                if key == "vocab_size":
                    what = "vocabularies differ"
                problems.append(f"{what}: {key} is {a!r} in the base ({base.label}) but {b!r} in {m.label}")
        vb, vm = _tokenizer_vocab(base.folder), _tokenizer_vocab(m.folder)
        if vb is not None and vm is not None:
            if vb != vm:
                only_b = len(set(vb) - set(vm))
                only_m = len(set(vm) - set(vb))
                moved = sum(1 for t in set(vb) & set(vm) if vb[t] != vm[t])
                problems.append(f"vocabularies differ: the tokenizers of the base and {m.label} disagree "
                                f"({only_b} tokens only in the base, {only_m} only in {m.label}, {moved} with other ids)")
        elif vb is None or vm is None:
            notes.append(f"tokenizer vocabularies not compared for {m.label} (no tokenizer.json/vocab.json in both folders)")
        names_b, names_m = set(base.infos), set(m.infos)
        if names_b != names_m:
            missing = sorted(names_b - names_m)[:5]
            extra = sorted(names_m - names_b)[:5]
            problems.append(f"{m.label} does not hold the base's tensors: missing {missing or 'none'}, "
                            f"extra {extra or 'none'} (a different architecture, or weights tied differently)")
        for name in _embedding_names(sorted(names_b & names_m)):
            if base.infos[name].shape != m.infos[name].shape:
                problems.append(f"embedding shapes differ: {name} is {base.infos[name].shape} in the base but "
                                f"{m.infos[name].shape} in {m.label} (tokens added in a fine-tune? merge needs equal vocabularies)")
        bad = [n for n in sorted(names_b & names_m)
               if base.infos[n].shape != m.infos[n].shape and n not in _embedding_names([n])]
        if bad:
            problems.append(f"tensor shapes differ between the base and {m.label}: " + ", ".join(
                f"{n} {base.infos[n].shape} vs {m.infos[n].shape}" for n in bad[:5]))
        kinds = [n for n in sorted(names_b & names_m)
                 if dtype_kind(base.infos[n].dtype) != dtype_kind(m.infos[n].dtype)]
        if kinds:
            problems.append(f"tensor dtypes differ in kind between the base and {m.label}: " + ", ".join(
                f"{n} {_dtype_name(base.infos[n].dtype)} vs {_dtype_name(m.infos[n].dtype)}" for n in kinds[:5]) +
                " (a quantized or differently exported model?)")
        precision = sorted(n for n in names_b & names_m if n not in kinds and base.infos[n].dtype != m.infos[n].dtype)
        if precision:
            n = precision[0]
            notes.append(f"{m.label} stores {len(precision)} tensor(s) in another float precision than the base "
                         f"(e.g. {n}: {_dtype_name(m.infos[n].dtype)} vs {_dtype_name(base.infos[n].dtype)}); they "
                         "are merged in float32 and written in the base's dtype")
    if problems:
        raise ValueError("cannot merge: " + "; ".join(dict.fromkeys(problems)) +
                         ". Merging needs models fine-tuned from the same base model, with the same tokenizer")
    return notes
