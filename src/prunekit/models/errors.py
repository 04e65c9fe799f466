"""Errors met while reading a model from disk, translated into what was wrong and what to do.

transformers, safetensors, gguf and torch each fail in their own words (``SafetensorError: header too
small``, ``struct.error``, a page about ``weights_only``); :func:`translate_load_errors` wraps a loader
so that a truncated, empty or corrupt file, a folder without weights and a broken ``config.json``
become a :class:`ModelFileError` (a ValueError) naming the file and the fix.
"""

from __future__ import annotations

import functools
import json
import pickle
import struct
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ModelFileError(ValueError):
    """A model on disk that cannot be read (the message says which file and what to do)."""


def explain_load_error(exc: BaseException, spec: Any) -> ModelFileError | None:
    """A clear error for a failure to read model ``spec``, or None when ``exc`` is not a file problem."""
    msg = " ".join(str(exc).split())
    where = f"model {str(spec)!r}"
    if type(exc).__name__ == "SafetensorError":
        return ModelFileError(f"{where}: a weights file (.safetensors) is truncated or corrupt ({msg}); "
                              "copy or save the model again")
    if isinstance(exc, pickle.UnpicklingError):
        return ModelFileError(f"{where}: its weights file holds pickled Python objects besides tensors, which "
                              "prunekit does not unpickle (that could run code from the file); convert it to "
                              "model.safetensors on a machine where you trust it")
    gguf = str(spec).endswith(".gguf") and Path(str(spec)).expanduser().is_file()
    if gguf and isinstance(exc, (struct.error, EOFError, IndexError, ValueError, OSError)):
        return ModelFileError(f"{where} is not a readable GGUF file: it is empty, truncated or corrupt ({msg}); "
                              "copy it again")
    if isinstance(exc, OSError) and "no file named" in msg:
        return ModelFileError(f"{where} has config.json but no weights (model.safetensors or pytorch_model.bin); "
                              "copy them into the folder, or point --model at a complete one")
    if "not a valid JSON file" in msg or (isinstance(exc, json.JSONDecodeError) and "config" in msg):
        return ModelFileError(f"{where}: {Path(str(spec)) / 'config.json'} is not valid JSON; repair it or save "
                              "the model again")
    if isinstance(exc, json.JSONDecodeError):
        return ModelFileError(f"{where}: one of its JSON files (tokenizer.json, tokenizer_config.json...) is "
                              f"corrupt ({msg}); copy or save the tokenizer again")
    if "Unrecognized model" in msg or "model_type" in msg and isinstance(exc, (ValueError, KeyError)):
        return ModelFileError(f"{where}: its config.json names no model type transformers knows (no or unknown "
                              "'model_type'); save it with save_pretrained, or fix the config")
    if "ignore_mismatched_sizes" in msg:  # transformers logs which tensors differ (silenced by --quiet): say it here
        found = shape_mismatches(Path(str(spec)).expanduser())
        detail = "; ".join(f"{n} is {list(w)} in the weights but {list(c)} by config.json" for n, w, c in found[:3])
        return ModelFileError(f"{where}: config.json disagrees with the weights" + (f" ({detail})" if detail else "")
                              + "; fix config.json (e.g. vocab_size, hidden_size) or save the model again")
    if "instantiate the backend tokenizer" in msg:
        return ModelFileError(f"{where} has no usable tokenizer (tokenizer.json missing or unreadable); copy the "
                              "tokenizer files into the folder")
    return None


def shape_mismatches(folder: Path) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(tensor, shape in the weights, shape config.json implies)`` for every tensor of a folder's
    safetensors files whose shape the config contradicts (the model is built on the meta device: no memory)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
        cls = AutoModelForCausalLM if type(config) in AutoModelForCausalLM._model_mapping else AutoModel
        with torch.device("meta"):
            model = cls.from_config(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        out = []
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for name in f.keys():
                    shape = tuple(f.get_slice(name).get_shape())
                    for key in (name, name.split(".", 1)[-1], f"model.{name}"):
                        if key in expected:
                            if expected[key] != shape:
                                out.append((name, shape, expected[key]))
                            break
        return out
    except Exception:  # noqa: BLE001 - a best-effort detail of an error already being reported
        return []


def translate_load_errors(fn: F) -> F:
    """Decorate a loader whose first argument is the model spec: file problems become ModelFileError."""

    @functools.wraps(fn)
    def wrapper(spec: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(spec, *args, **kwargs)
        except ModelFileError:
            raise
        except Exception as exc:
            better = explain_load_error(exc, spec)
            if better is None:
                raise
            raise better from exc

    return wrapper  # type: ignore[return-value]
