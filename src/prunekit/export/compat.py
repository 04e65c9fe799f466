"""A saved ``config.json`` that transformers 4.x and 5.x read the same.

transformers 5 renamed fields that 4.x still reads under their old names, and 4.x falls back to a
default without a word when the old name is absent (a RoPE base of 10000 instead of the model's
100000: the same weights, another model). :func:`reader_keys` adds the old names, with the values the
new ones hold, wherever the two differ; transformers 5 reads the new names first and keeps reading
the same model (``tests/export/test_compat.py`` checks both versions, the 4.x one in a marked test).

Fields handled, from transformers 5's own conversion code (``PreTrainedConfig.__init__``,
``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``, the Gemma 3 / ModernBERT configs):

- ``dtype`` (5.x) ↔ ``torch_dtype`` (4.x);
- ``rope_parameters.rope_theta`` ↔ ``rope_theta`` (per layer type: Gemma 3's ``rope_local_base_freq``,
  ModernBERT's ``global_rope_theta`` / ``local_rope_theta``);
- ``rope_parameters`` of a scaled RoPE (linear, dynamic, yarn, llama3, longrope) ↔ ``rope_scaling``
  (``null`` for the default RoPE, as 4.x wrote it);
- ``rope_parameters.partial_rotary_factor`` ↔ ``partial_rotary_factor``;
- layer types ``linear_attention`` / ``full_attention`` ↔ ``mamba`` / ``attention`` where 4.x configs used
  the old names (GraniteMoeHybrid, Zamba2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

# Per model type, the 4.x names of the RoPE bases of each attention kind (5.x nests them by layer type).
_LAYER_THETAS = {
    "gemma3_text": {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"},
    "gemma3n_text": {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"},
    "modernbert": {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"},
    "modernbert-decoder": {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"},
}
_NOT_SCALING = ("rope_theta", "partial_rotary_factor")
# Layer-type names 5.x renamed (configuration_utils._LEGACY_LAYER_TYPE_REMAP, old → new), and the model types
# whose 4.x configs hold the old names (4.x GraniteMoeHybrid raises on the new ones). 5.x maps the old
# names back to the new ones when it reads a config, so writing the old ones reads the same in both.
_OLD_LAYER_NAMES = {"linear_attention": "mamba", "full_attention": "attention"}
_OLD_LAYER_KEYS = {"granitemoehybrid": ("layer_types", "layers_block_type"), "zamba2": ("layers_block_type",)}


def _rope_keys(params: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    nested = {k: v for k, v in params.items() if isinstance(v, Mapping)}
    if nested:
        names = _LAYER_THETAS.get(model_type, {"full_attention": "rope_theta"})
        out = {name: nested[kind]["rope_theta"] for kind, name in names.items()
               if kind in nested and nested[kind].get("rope_theta") is not None}
        main = nested.get("full_attention") or next(iter(nested.values()))
    else:
        main = params
        out = {"rope_theta": main["rope_theta"]} if main.get("rope_theta") is not None else {}
    kind = main.get("rope_type", main.get("type", "default"))
    out["rope_scaling"] = None if kind == "default" else {k: v for k, v in main.items() if k not in _NOT_SCALING}
    if main.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = main["partial_rotary_factor"]
    return out


def reader_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a ``config.json`` as a dict, sub-configs included) with the transformers 4.x names
    added beside the 5.x ones, holding the same values."""
    out = dict(config)
    dtype = out.get("dtype") or out.get("torch_dtype")
    if dtype is not None:
        out["dtype"] = out["torch_dtype"] = dtype
    params = out.get("rope_parameters")
    if isinstance(params, Mapping) and params:
        out.update(_rope_keys(params, str(out.get("model_type", ""))))
    for key in _OLD_LAYER_KEYS.get(str(out.get("model_type", "")), ()):
        if isinstance(out.get(key), list):
            out[key] = [_OLD_LAYER_NAMES.get(t, t) for t in out[key]]
    for key, value in list(out.items()):
        if isinstance(value, Mapping) and "model_type" in value:  # a sub-config (text_config, …)
            out[key] = reader_keys(value)
    return out


def write_reader_keys(folder: str | Path) -> dict[str, Any]:
    """Rewrite ``folder/config.json`` with :func:`reader_keys` (the caller makes the folder atomic);
    returns the new config."""
    path = Path(folder) / "config.json"
    config = reader_keys(json.loads(path.read_text()))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config
