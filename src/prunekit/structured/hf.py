"""Hugging Face transformers through the one verb: heads and neurons by the transformer functions,
hidden channels through the graph, and the config kept true so ``from_pretrained`` reloads the result."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

FFN_FIELDS = ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner", "d_ff", "dim_feedforward",
              "hidden_dim", "mlp_dim")


def is_hf(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (it has a ``PretrainedConfig``)."""
    try:
        from transformers import PretrainedConfig
    except Exception:  # pragma: no cover - transformers is optional
        return False
    return isinstance(getattr(model, "config", None), PretrainedConfig)


def _text(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def input_embedding_prefix(model: nn.Module) -> str | None:
    """The qualified name of the module ``get_input_embeddings()`` returns (token or patch embeddings)."""
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    for name, mod in model.named_modules():
        if mod is emb:
            return name
    return None


def mismatches(model: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(tensor, shape the config builds, shape the model has) for every tensor that differs, built on
    the meta device: empty when ``save_pretrained`` + ``from_pretrained`` will reload the model."""
    config = copy.deepcopy(model.config)
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception as exc:
        return [(f"(the config no longer builds a model: {type(exc).__name__}: {exc})", (), ())]
    ref = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return [(k, ref[k], tuple(v.shape)) for k, v in model.state_dict().items() if k in ref and tuple(v.shape) != ref[k]]


def rebuild_mismatches(model: nn.Module) -> list[str]:
    """Names of the tensors whose shapes the config does not describe."""
    return [k for k, _, _ in mismatches(model)]


def update_config_(model: nn.Module, *_: Any) -> dict[str, Any]:
    """Write the pruned widths into ``model.config``: each integer field equal to a width that a tensor
    lost (``hidden_size``, ``intermediate_size``, ``n_inner``, ``ffn_dim``, …) is set to the new width
    when that makes the config describe more of the model (checked by building it on the meta device).
    ``head_dim`` is written out when the hidden width changes, so attention keeps its own width."""
    text = _text(model.config)
    changes: dict[str, Any] = {}
    wrong = mismatches(model)
    for _ in range(6):
        if not wrong or wrong[0][1] == ():
            break
        pairs = []
        for _, exp, got in wrong:
            pairs += [(e, g) for e, g in zip(exp, got) if e != g]
        best = None
        for old, new in dict.fromkeys(pairs):
            for field_name in _fields_worth(text, old):
                before = getattr(text, field_name, None)
                extra = _head_dim_guard(text, field_name, old)
                setattr(text, field_name, new)
                after = mismatches(model)
                setattr(text, field_name, before)
                for k, v in extra.items():
                    setattr(text, k, v)
                if (after and after[0][1] == ()) or len(after) >= len(wrong):
                    continue
                if best is None or len(after) < len(best[3]):
                    best = (field_name, new, _head_dim_guard(text, field_name, old, dry=True), after)
        if best is None:
            break
        field_name, new, extra, wrong = best
        for k, v in extra.items():
            setattr(text, k, v)
            changes[k] = v
        setattr(text, field_name, new)
        changes[field_name] = new
    return changes


def _fields_worth(text: Any, old: int) -> list[str]:
    fields = [k for k, v in vars(text).items() if type(v) is int and v == old and not k.startswith("_")
              and k not in ("vocab_size", "num_labels", "max_position_embeddings")]
    hidden = getattr(text, "hidden_size", None)
    fields += [k for k in FFN_FIELDS if k in vars(text) and getattr(text, k) is None and hidden and 4 * hidden == old]
    return fields


def _head_dim_guard(text: Any, field_name: str, old: int, dry: bool = False) -> dict[str, Any]:
    """Changing ``hidden_size`` of a family that reads ``head_dim`` keeps the attention width: write it out."""
    if field_name != "hidden_size" or "head_dim" not in vars(text) and not hasattr(type(text), "head_dim"):
        return {}
    heads = getattr(text, "num_attention_heads", None)
    if getattr(text, "head_dim", None) is not None or not heads:
        return {}
    if not dry:
        text.head_dim = old // heads
        return {"head_dim": None}
    return {"head_dim": old // heads}


def prune_units_(model: nn.Module, what: str, sparsity: float, importance: str, seed: int, data: Any,
                 example_inputs: Any) -> Any:
    """``what="heads"|"neurons"``: the transformer functions (whole GQA groups of heads; MLP neurons)."""
    from .transformers import prune_heads_, prune_neurons_

    fn = prune_heads_ if what == "heads" else prune_neurons_
    calibration = None
    if importance == "activation":
        batches = list(data) if data is not None else [example_inputs]
        calibration = [b[0] if isinstance(b, (tuple, list)) and len(b) == 2 and data is not None else b
                       for b in batches]
        calibration = calibration[0] if len(calibration) == 1 else torch.cat(
            [c if isinstance(c, torch.Tensor) else c["input_ids"] for c in calibration])
    return fn(model, sparsity, importance=importance, seed=seed, calibration=calibration)


def sync_from_config_(model: nn.Module) -> list[str]:
    """Make the pruned model compute what ``from_pretrained`` of its saved folder will compute: module
    numbers derived from the config at construction (attention ``scaling = head_dim ** -0.5``, Gemma's
    ``embed_scale = hidden_size ** 0.5``) and non-persistent buffers are taken from a model built from
    the updated config. Returns the names of what changed."""
    try:
        from accelerate import init_empty_weights
    except Exception:  # pragma: no cover - accelerate is a dependency of the hf extra
        return []
    try:
        with init_empty_weights(include_buffers=False):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception:
        return []
    mods = dict(model.named_modules())
    changed = []
    for name, fm in fresh.named_modules():
        mod = mods.get(name)
        if mod is None or type(mod) is not type(fm):
            continue
        for k, v in vars(fm).items():
            if k.startswith("_") or type(v) not in (int, float):
                continue
            cur = getattr(mod, k, None)
            if type(cur) is type(v) and cur != v:
                setattr(mod, k, v)
                changed.append(f"{name}.{k}" if name else k)
        for b in getattr(fm, "_non_persistent_buffers_set", ()):
            fb, cur = fm._buffers.get(b), mod._buffers.get(b)
            if isinstance(fb, torch.Tensor) and isinstance(cur, torch.Tensor) and fb.device.type != "meta" \
                    and fb.shape == cur.shape and not torch.equal(fb.to(cur.dtype), cur):
                mod._buffers[b] = fb.to(device=cur.device, dtype=cur.dtype)
                changed.append(f"{name}.{b}" if name else b)
    return changed
