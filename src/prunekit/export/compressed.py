"""Sparse weights in the compressed-tensors layouts (the format llm-compressor wrote for sparse models).

Two layouts, chosen by what the model's zeros allow:

- ``sparse-bitmask`` (any zeros): per Linear module ``<module>.shape`` (int64 [rows, cols]),
  ``<module>.compressed`` (the non-zero values, 1-D, row by row), ``<module>.bitmask`` (uint8
  [rows, ceil(cols / 8)], bits packed little-endian along each row) and ``<module>.row_offsets``
  (int64 [rows]: where each row starts in ``compressed``).
- ``sparse-24-bitmask`` (every group of 4 consecutive weights along a row holds at most 2 non-zeros):
  ``<module>.shape`` (int64 [2, 1]), ``<module>.compressed`` ([rows, cols / 2]: exactly two values a
  group, a zero filling a group that has fewer) and ``<module>.bitmask`` as above (two bits a group).

``config.json`` carries ``quantization_config = {"quant_method": "compressed-tensors", "sparsity_config":
{"format", "global_sparsity", "sparsity_structure", "targets": ["Linear"], "ignore": [...]}}``; modules in
``ignore`` (the LM head, tied weights, layers too dense to gain) are stored as plain ``weight`` tensors.

Who reads these folders (checked in July 2026): compressed-tensors up to 0.14.0.1 with transformers
4.x (decompresses to dense on load); :func:`load_compressed` here (any transformers). compressed-tensors
0.15+ dropped sparse compression (vllm-project/compressed-tensors#610), transformers 5.10+ ignores a
``sparsity_config`` (huggingface/transformers#46342), and vLLM 0.19.1+ refuses 2:4 models
(vllm-project/vllm#36799).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

FORMAT_BITMASK = "sparse-bitmask"
FORMAT_24 = "sparse-24-bitmask"
FORMATS = (FORMAT_BITMASK, FORMAT_24)
# The last compressed-tensors release that reads and writes these layouts; written as the config's version.
LAYOUT_VERSION = "0.14.0.1"
_PARTS = {FORMAT_BITMASK: ("shape", "compressed", "bitmask", "row_offsets"), FORMAT_24: ("shape", "compressed", "bitmask")}


@dataclass
class CompressionPlan:
    """Which Linear weights are stored compressed, in which layout, and the bytes each way."""

    format: str
    structure: str
    compressed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    global_sparsity: float = 0.0
    dense_bytes: int = 0
    compressed_bytes: int = 0

    def sparsity_config(self) -> dict[str, Any]:
        """The ``sparsity_config`` entry of ``quantization_config`` (as compressed-tensors ≤ 0.14 dumps it)."""
        return {"format": self.format, "global_sparsity": self.global_sparsity, "ignore": sorted(self.ignored),
                "registry_requires_subclass": False, "sparsity_structure": self.structure, "targets": ["Linear"]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantization_config(plan: CompressionPlan) -> dict[str, Any]:
    """The whole ``quantization_config`` a compressed folder's ``config.json`` gets."""
    return {"quant_method": "compressed-tensors", "version": LAYOUT_VERSION, "format": "dense",
            "sparsity_config": plan.sparsity_config(), "transform_config": {}}


def _is_24(weight: Tensor) -> bool:
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def bitmask_nbytes(weight: Tensor, dtype: torch.dtype, fmt: str) -> int:
    """Bytes of one weight in ``fmt`` (values in ``dtype``), tensor headers aside."""
    rows, cols = weight.shape
    item = torch.empty((), dtype=dtype).element_size()
    mask = rows * math.ceil(cols / 8)
    if fmt == FORMAT_24:
        return rows * cols // 2 * item + mask + 2 * 8
    return int(torch.count_nonzero(weight)) * item + mask + rows * 8 + 2 * 8


def _tied_to_earlier(model: nn.Module) -> set[str]:
    """Names of Linear modules whose weight is the same tensor as an earlier parameter (a tied LM head)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen and name.endswith(".weight"):
            tied.add(name[: -len(".weight")])
        seen.setdefault(key, name)
    return tied


def plan_compression(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> CompressionPlan:
    """Decide the layout: the 2:4 one when every compressible weight is 2:4, else the bitmask one.

    Every ``nn.Linear`` is a target except the output embedding, weights tied to another parameter and
    layers whose compressed form would not be smaller. Raises a ValueError, before anything is written,
    when no layer gains (a model with no sparsity): the compressed folder would be larger than a dense one.
    """
    from ..core.sparse_io import effective_state_dict

    state = effective_state_dict(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = _tied_to_earlier(model)
    item = torch.empty((), dtype=dtype).element_size()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    candidates, ignored = [], []
    for name, module in linears:
        w = state.get(f"{name}.weight")
        if module is output or name in tied or w is None or w.dim() != 2:
            ignored.append(name)
            continue
        if bitmask_nbytes(w, dtype, FORMAT_BITMASK) < w.numel() * item:
            candidates.append((name, w))
        else:
            ignored.append(name)
    if not candidates:
        zeros = sum(int((state[f"{n}.weight"] == 0).sum()) for n, _ in linears if f"{n}.weight" in state)
        total = sum(state[f"{n}.weight"].numel() for n, _ in linears if f"{n}.weight" in state) or 1
        raise ValueError(
            f"the model has no sparsity to compress: its Linear weights are {zeros / total:.1%} zeros, and a "
            "bitmask plus values would be larger than the dense weights. Prune it first, or save it with "
            "--format safetensors")
    fmt = FORMAT_24 if all(_is_24(w) for _, w in candidates) else FORMAT_BITMASK
    dense = comp = 0
    for _, w in candidates:
        dense += w.numel() * item
        comp += bitmask_nbytes(w, dtype, fmt)
    params = [t for k, t in state.items() if t.is_floating_point()]
    total = sum(t.numel() for t in params)
    zeros = sum(int((t == 0).sum()) for t in params)
    return CompressionPlan(format=fmt, structure="2:4" if fmt == FORMAT_24 else "unstructured",
                           compressed=[n for n, _ in candidates], ignored=ignored,
                           global_sparsity=zeros / total if total else 0.0, dense_bytes=dense, compressed_bytes=comp)


def _pack(mask: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def _unpack(bits: Tensor, shape: list[int]) -> Tensor:
    out = np.unpackbits(bits.numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(out.reshape(shape).astype(bool))


def _take(weight: Tensor, mask: Tensor) -> Tensor:
    """The entries of ``weight`` where ``mask`` is set, row by row (faster than boolean indexing)."""
    return weight.reshape(-1)[mask.reshape(-1).nonzero().squeeze(1)]


def compress_weight(weight: Tensor, fmt: str) -> dict[str, Tensor]:
    """One dense 2-D weight → its parts in ``fmt`` (local names ``shape``, ``compressed``, …)."""
    weight = weight.detach().cpu().contiguous()
    rows, cols = weight.shape
    mask = weight != 0
    if fmt == FORMAT_24:
        if not _is_24(weight):
            raise ValueError("a weight with more than 2 non-zeros in a group of 4 cannot be stored as 2:4")
        groups = mask.reshape(rows, -1, 4)
        need = 2 - groups.sum(-1, keepdim=True)  # zeros to keep as placeholders in sparse groups
        fill = (~groups) & (torch.cumsum((~groups).int(), -1) <= need)
        keep = (groups | fill).reshape(rows, cols)
        return {"shape": torch.tensor([rows, cols]).reshape(-1, 1),
                "compressed": _take(weight, keep).reshape(rows, cols // 2), "bitmask": _pack(keep)}
    counts = mask.sum(-1)
    return {"shape": torch.tensor([rows, cols]), "compressed": _take(weight, mask), "bitmask": _pack(mask),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def decompress_weight(parts: Mapping[str, Tensor], fmt: str) -> Tensor:
    """The parts of one weight in ``fmt`` → the dense weight, exactly."""
    shape = [int(s) for s in parts["shape"].flatten().tolist()]
    values = parts["compressed"]
    mask = _unpack(parts["bitmask"], shape)
    if int(mask.sum()) != values.numel():
        raise ValueError(f"a compressed weight of shape {shape} has {values.numel()} values for {int(mask.sum())} "
                         "set bits: the file is damaged")
    return torch.zeros(shape, dtype=values.dtype).masked_scatter_(mask, values.flatten())


def compress_state_dict(state: Mapping[str, Tensor], plan: CompressionPlan, dtype: torch.dtype) -> dict[str, Tensor]:
    """The tensors to write: planned Linear weights as their parts, everything else as is (floats in ``dtype``)."""
    targets = set(plan.compressed)
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(dtype)
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module in targets:
            for part, value in compress_weight(t, plan.format).items():
                out[f"{module}.{part}"] = value
        else:
            out[key] = t.contiguous().clone()
    return out


def sparsity_config_of(folder: str | Path) -> dict[str, Any] | None:
    """The ``sparsity_config`` of a folder's ``config.json`` when it names a sparse layout, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not readable: the loader's own checks say what is wrong with it
    qc = (config.get("quantization_config") if isinstance(config, dict) else None) or {}
    if not isinstance(qc, dict):
        return None
    sc = qc.get("sparsity_config") or {}
    if qc.get("quant_method") != "compressed-tensors" or not isinstance(sc, dict) or sc.get("format") not in FORMATS:
        return None
    return sc


def is_compressed_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model in one of the sparse compressed-tensors layouts."""
    return Path(folder).is_dir() and sparsity_config_of(folder) is not None


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a folder (all shards; each checked to stay inside the folder)."""
    from ..infra.shards import safetensors_files

    return [Path(folder) / f for f in safetensors_files(folder)]


def _format_of(folder: str | Path) -> str:
    config = sparsity_config_of(folder)
    if config is None:
        raise ValueError(f"{folder} is not a compressed-tensors sparse folder (no sparse-bitmask or "
                         "sparse-24-bitmask sparsity_config in its config.json)")
    return config["format"]


def iter_compressed(folder: str | Path) -> Iterator[tuple[str, Tensor]]:
    """A compressed folder's weights one tensor at a time, ``(state-dict key, dense tensor)``, exactly the
    values written; only one module's parts are decompressed at once."""
    from safetensors import safe_open

    fmt = _format_of(folder)
    parts = _PARTS[fmt]
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            modules = {k.rpartition(".")[0] for k in keys if k.endswith(".bitmask")}
            for module in sorted(modules):
                missing = [p for p in parts if f"{module}.{p}" not in keys]
                if missing:
                    raise ValueError(f"{folder}: {module} is stored as {fmt} but lacks its {', '.join(missing)}")
                yield f"{module}.weight", decompress_weight({p: f.get_tensor(f"{module}.{p}") for p in parts}, fmt)
            taken = {f"{m}.{p}" for m in modules for p in parts}
            for key in sorted(keys - taken):
                yield key, f.get_tensor(key)


def read_compressed(folder: str | Path) -> dict[str, Tensor]:
    """A compressed folder's weights as a dense state dict (exactly the values written)."""
    return dict(iter_compressed(folder))


def load_compressed(folder: str | Path, dtype: torch.dtype | None = torch.float32) -> tuple[nn.Module, Any]:
    """Build the model of a compressed folder from its config and fill it with the decompressed weights,
    one module at a time; returns ``(model, tokenizer)`` (eval mode, in ``dtype``; None: the stored dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    _format_of(folder)
    config = AutoConfig.from_pretrained(str(folder))
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    stored = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        str(getattr(config, "dtype", None) or "").removeprefix("torch."), torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or stored)
    targets = model.state_dict()
    unexpected, loaded = [], set()
    with torch.no_grad():
        for key, value in iter_compressed(folder):
            if key not in targets or tuple(targets[key].shape) != tuple(value.shape):
                unexpected.append(key if key not in targets else f"{key} {tuple(value.shape)}")
                continue
            targets[key].copy_(value)
            loaded.add(key)
    tie = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in targets if k not in loaded and not (tie and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ValueError(f"{folder}: the weights do not match the model of its config.json "
                         f"(missing {missing[:5]}, unexpected or misshapen {unexpected[:5]})")
    if tie:
        model.tie_weights()
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


def compressed_modules(folder: str | Path) -> Iterable[str]:
    """Names of the modules stored compressed in a folder (for reports and tests)."""
    from safetensors import safe_open

    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith(".bitmask"):
                    yield key[: -len(".bitmask")]
