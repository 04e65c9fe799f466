"""Write a (pruned) Hugging Face model into a folder: dense safetensors or the compressed-tensors sparse
layouts, in the dtype the user expects, with its tokenizer; report the bytes that landed on disk.

These functions write into a folder the caller owns (for the CLI, the temporary folder of
``infra.atomic.output_folder``, which is swapped into place only when everything is written).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .compat import reader_keys
from .dtype import SaveDtype
from ..metrics.size import weight_bytes

SAVE_FORMATS = ("safetensors", "compressed")
MAX_SHARD_BYTES = 5 * 1024**3


@dataclass
class SavedModel:
    """What was written: format, dtype (and why), the weight files and their bytes on disk."""

    format: str
    dtype: str
    dtype_reason: str
    weight_bytes: int
    files: list[str] = field(default_factory=list)
    layout: str | None = None
    compressed_modules: int = 0
    dense_modules: int = 0
    read_back: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        what = f"{self.format} ({self.layout})" if self.layout else self.format
        text = f"saved {what}, {self.dtype} ({self.dtype_reason}): {self.weight_bytes / 1e6:,.1f} MB of weights"
        rb = self.read_back or {}
        if rb.get("reader"):
            text += f"; read back with {rb['reader']}: max |Δ logit| {rb['max_abs_diff']:.1e}"
        elif rb.get("note"):
            text += f"; {rb['note']}"
        return text


def cast_state_dict(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Floating tensors in ``dtype``, others as they are; tensors that shared storage still do (so that
    tied weights are still recognised as tied)."""
    memo: dict[tuple[int, torch.dtype, tuple[int, ...]], Tensor] = {}
    out = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point() or t.dtype == dtype:
            out[key] = t
            continue
        k = (t.data_ptr(), t.dtype, tuple(t.shape))
        if k not in memo:
            memo[k] = t.to(dtype)
        out[key] = memo[k]
    return out


def drop_tied(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Without the weights the model ties to an earlier one on loading (a tied LM head)."""
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return dict(state)
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = {}
    for key, t in state.items():
        k = (t.data_ptr(), tuple(t.shape))
        if k in seen:
            continue
        seen.add(k)
        out[key] = t
    return out


def _write_config(model: nn.Module, folder: Path, dtype: SaveDtype, extra: Mapping[str, Any] | None = None) -> None:
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None and hasattr(model, "can_generate") and model.can_generate():
        model.generation_config.save_pretrained(str(folder))
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = dtype.name
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    config.update(extra or {})
    config = reader_keys(config)  # the 4.x names too (torch_dtype, rope_theta, …): every reader, one model
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_safetensors(tensors: dict[str, Tensor], folder: Path) -> list[str]:
    """One ``model.safetensors``, or shards of at most 5 GiB with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += n
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


@contextlib.contextmanager
def disk_errors(path: str | Path):
    """Turn a writer's report of a full disk (safetensors: ``SafetensorError("Error while serializing: I/O
    error: No space left on device (os error 28)")``) into the
    ``OSError(ENOSPC)`` it is, so the user reads "no space left", not "file truncated or corrupt"."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        text = str(exc)
        if "os error 28" in text or "No space left" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


FLOAT16_MAX = 65504.0


def check_float16(tensors: Mapping[str, Tensor] | Any, what: str = "--dtype float16") -> None:
    """Raise a ValueError naming the tensors whose finite values exceed float16's range (±65504): cast
    to float16 they would become inf. ``tensors``: a state dict or a model."""
    if isinstance(tensors, nn.Module):
        from ..core.sparse_io import effective_state_dict

        tensors = effective_state_dict(tensors)
    over = []
    for key, t in tensors.items():
        if t.is_floating_point() and t.dtype != torch.float16 and t.numel():
            big = float(t.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max())
            if big > FLOAT16_MAX:
                over.append((key, big))
    if over:
        names = ", ".join(f"{k} (|w| up to {v:.3g})" for k, v in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        raise ValueError(f"{what}: {len(over)} tensor(s) hold values beyond float16's range ±65504, which would "
                         f"become inf: {names}{more}. Use bfloat16 (same size, float32's range) or float32")


COMPRESSED_READER_ENV = "PRUNEKIT_COMPRESSED_READER"
COMPRESSED_READERS = "transformers 4.x with compressed-tensors <= 0.14 (checked: transformers 4.53.3 + " \
                     "compressed-tensors 0.10.2)"


def compressed_reader() -> str | None:
    """How a compressed folder will be read back: ``"stock"`` (this environment's transformers reads the
    sparse layouts), the python named by ``$PRUNEKIT_COMPRESSED_READER``, or None (nothing here reads it)."""
    python = os.environ.get(COMPRESSED_READER_ENV)
    if python:
        return python
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf, ct = version("transformers"), version("compressed-tensors")
    except PackageNotFoundError:
        return None
    ct_version = tuple(int(x) for x in ct.split(".")[:2] if x.isdigit())
    return "stock" if int(tf.split(".")[0]) < 5 and ct_version <= (0, 14) else None


def check_compressed_readable() -> str:
    """The reader a compressed folder is checked with, or a ValueError (before anything is written) when
    neither this environment nor ``$PRUNEKIT_COMPRESSED_READER`` reads the sparse layouts."""
    reader = compressed_reader()
    if reader is not None:
        if reader != "stock" and not (Path(reader).is_file() and os.access(reader, os.X_OK)):
            raise ValueError(f"${COMPRESSED_READER_ENV}={reader} is not an executable python; point it at the "
                             f"python of an environment with {COMPRESSED_READERS}")
        return reader
    from .readback import versions

    raise ValueError(
        f"--format compressed writes compressed-tensors' sparse layouts, which only {COMPRESSED_READERS} read; "
        f"this environment has {versions() or 'no transformers'}, whose from_pretrained would load the folder "
        "with the pruned Linear weights missing and random. Save --format safetensors (dense: every reader), or "
        "export --to gguf --quant q8_0 for a smaller file (llama.cpp; transformers gguf_file=); to write it for "
        f"the older stack, set {COMPRESSED_READER_ENV} to that environment's python and the folder is read back "
        "there (docs/export.md)")


def check_save_format(fmt: str) -> str:
    """A save format name, checked (``safetensors`` or ``compressed``)."""
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"format {fmt!r} is not one prunekit saves a folder in; expected {', '.join(SAVE_FORMATS)} "
                         "(for GGUF use 'prunekit export FOLDER --to gguf')")
    return fmt


def plan_save(model: nn.Module, fmt: str, dtype: SaveDtype):
    """Every check a save needs, before anything is written; returns the compression plan (or None)."""
    check_save_format(fmt)
    if not hasattr(model, "config") or not hasattr(model.config, "save_pretrained"):
        raise ValueError(f"{type(model).__name__} is not a Hugging Face model (no config): save its weights with "
                         "prunekit.save_sparse instead")
    if dtype.dtype == torch.float16:
        check_float16(model)
    if fmt == "compressed":
        from .compressed import plan_compression

        plan = plan_compression(model, dtype.dtype)  # "no sparsity to compress" first: true everywhere
        check_compressed_readable()
        return plan
    return None


def save_model(model: nn.Module, tokenizer: Any, folder: str | Path, fmt: str, dtype: SaveDtype,
               plan: Any = None, read_back: bool = True, target: str | Path | None = None) -> SavedModel:
    """Write ``model`` (masks baked in, floats in ``dtype``) and ``tokenizer`` into ``folder`` as ``fmt``,
    then read it back with the stock loader (:func:`read_back_saved`) unless ``read_back`` is False.

    The in-memory model is not changed (its weights are cast into a copy). ``plan`` is what
    :func:`plan_save` returned (it is computed here when not given). ``target`` is the path the folder
    becomes (named in errors; default ``folder``).
    """
    from ..core.sparse_io import effective_state_dict

    folder = Path(folder)
    if plan is None:
        plan = plan_save(model, fmt, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    state = cast_state_dict(effective_state_dict(model), dtype.dtype)
    if fmt == "safetensors":
        with disk_errors(folder):
            model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        _write_config(model, folder, dtype)
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        saved = SavedModel("safetensors", dtype.name, dtype.reason, weight_bytes(folder), files)
    else:
        from .compressed import compress_state_dict, quantization_config

        tensors = compress_state_dict(drop_tied(state, model), plan, dtype.dtype)
        with disk_errors(folder):
            files = _write_safetensors(tensors, folder)
        _write_config(model, folder, dtype, {"quantization_config": quantization_config(plan)})
        saved = SavedModel("compressed", dtype.name, dtype.reason, weight_bytes(folder), files, plan.format,
                           len(plan.compressed), len(plan.ignored))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    del state
    if read_back:
        saved.read_back = read_back_saved(model, folder, fmt, dtype.dtype, target=target)
    return saved


def read_back_saved(model: nn.Module, folder: str | Path, fmt: str, dtype: torch.dtype,
                    target: str | Path | None = None) -> dict[str, Any]:
    """Load the folder just written as its user will and compare logits with ``model`` (raises
    :class:`prunekit.export.readback.ReadBackError` on a mismatch); returns what was checked."""
    from .readback import ReadBack, ReadBackError, probe_ids, read_back_folder, reference_logits, tolerance

    config = model.config
    if getattr(config, "prunekit_slicing", None):
        return {"note": "not read back: a per-layer SliceGPT folder is read only by prunekit.slicing.load_sliced "
                        "(stock loaders refuse it by design)"}
    if fmt == "compressed" and compressed_reader() not in (None, "stock"):
        from .interop import logits_in

        python = compressed_reader()
        ids = probe_ids(model)
        expected = reference_logits(model, ids, lambda _k, t: t.to(dtype).to(t.dtype))
        try:
            got, found = logits_in(python, folder, ids)
        except RuntimeError as exc:
            raise ReadBackError(f"the compressed folder was written but {exc}; nothing was saved at "
                                f"{target or folder}") from exc
        tol = tolerance(expected, int(getattr(config, "hidden_size", 0) or 0),
                        int(getattr(config, "num_hidden_layers", 0) or 0))
        diff = float((got.float() - expected).abs().max()) if got.shape == expected.shape else float("inf")
        reader = (f"{python}: AutoModelForCausalLM.from_pretrained (transformers {found.get('transformers')}, "
                  f"compressed-tensors {found.get('compressed_tensors')})")
        rb = ReadBack(reader, ids.shape[-1], diff, tol)
        if not rb.ok:
            raise ReadBackError(f"the compressed folder was written but does not read back as the model: {rb}; "
                                f"nothing was saved at {target or folder}")
        return rb.to_dict()
    return read_back_folder(model, folder, dtype, target=target).to_dict()
