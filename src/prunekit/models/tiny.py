"""Tiny randomly initialised Hugging Face models of every family prunekit supports (tests, examples).

``tiny_model("gemma3")`` builds a two-block Gemma 3 with random weights in well under a second, from a
config small enough for unit tests yet shaped like the real family: grouped-query attention where the
family has it, explicit ``head_dim`` where the family decouples it from the hidden size, sliding and
global layers for Gemma 2/3, fused qkv for Phi-3 / GPT-2 / GPT-NeoX / Falcon, routed experts for the
MoE families. ``overrides`` replace any config field (``tiny_model("falcon", multi_query=True)``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


ENCODERS = ("bert", "bart", "albert", "electra", "xlm-roberta", "clip-text", "siglip-text")  # built by AutoModel


def _configs(vocab: int, hidden: int, layers: int) -> dict[str, Callable[..., Any]]:
    import transformers as tf

    ffn = 2 * hidden
    gqa = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2)
    # Gemma 2/3 alternate sliding-window and global layers; a window shorter than the test sequences
    # makes the two kinds of layers see different masks.
    local_global = ["sliding_attention", "full_attention"] * layers
    moe = dict(num_experts_per_tok=2, output_router_logits=False)
    return {
        "llama": lambda **o: tf.LlamaConfig(**{**gqa, **o}),
        "mistral": lambda **o: tf.MistralConfig(**{**gqa, "sliding_window": None, **o}),
        "qwen2": lambda **o: tf.Qwen2Config(**{**gqa, **o}),
        "qwen3": lambda **o: tf.Qwen3Config(**{**gqa, "head_dim": 24, **o}),
        "gemma": lambda **o: tf.GemmaConfig(**{**gqa, "head_dim": 24, **o}),
        "gemma2": lambda **o: tf.Gemma2Config(**{**gqa, "head_dim": 24, "sliding_window": 4,
                                                 "layer_types": local_global[:layers], **o}),
        "gemma3": lambda **o: tf.Gemma3TextConfig(**{**gqa, "head_dim": 24, "sliding_window": 4,
                                                     "layer_types": local_global[:layers], **o}),
        "phi3": lambda **o: tf.Phi3Config(**{**gqa, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "gpt2": lambda **o: tf.GPT2Config(**{"vocab_size": vocab, "n_embd": hidden, "n_layer": layers, "n_head": 4,
                                             "n_positions": 256, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "gpt_neox": lambda **o: tf.GPTNeoXConfig(**{"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
                                                    "num_hidden_layers": layers, "num_attention_heads": 4,
                                                    "max_position_embeddings": 256, **o}),
        "opt": lambda **o: tf.OPTConfig(**{"vocab_size": vocab, "hidden_size": hidden, "ffn_dim": ffn,
                                           "num_hidden_layers": layers, "num_attention_heads": 4,
                                           "word_embed_proj_dim": hidden, "max_position_embeddings": 256,
                                           "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1, **o}),
        # Falcon-40B/180B's grouped layout by default; multi_query=True, new_decoder_architecture=False
        # gives Falcon-7B's, both False Falcon-RW's.
        "falcon": lambda **o: tf.FalconConfig(**{"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
                                                 "num_attention_heads": 4, "num_kv_heads": 2,
                                                 "new_decoder_architecture": True, "ffn_hidden_size": ffn,
                                                 "bos_token_id": 0, "eos_token_id": 0, **o}),
        "mixtral": lambda **o: tf.MixtralConfig(**{**gqa, "num_local_experts": 4, "sliding_window": None, **moe, **o}),
        "qwen2_moe": lambda **o: tf.Qwen2MoeConfig(**{**gqa, "num_experts": 4, "moe_intermediate_size": hidden,
                                                      "shared_expert_intermediate_size": ffn, **moe, **o}),
        "qwen3_moe": lambda **o: tf.Qwen3MoeConfig(**{**gqa, "head_dim": 24, "num_experts": 4,
                                                      "moe_intermediate_size": hidden, "decoder_sparse_step": 1,
                                                      "mlp_only_layers": [], **moe, **o}),
        "bert": lambda **o: tf.BertConfig(**{"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
                                             "num_hidden_layers": layers, "num_attention_heads": 4, **o}),
        # more families, for structured pruning's checks (MORE_FAMILIES)
        "cohere": lambda **o: tf.CohereConfig(**{**gqa, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **o}),
        "starcoder2": lambda **o: tf.Starcoder2Config(**{**gqa, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "phi": lambda **o: tf.PhiConfig(**{**gqa, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "glm": lambda **o: tf.GlmConfig(**{**gqa, "head_dim": 16, "pad_token_id": 0, "eos_token_id": 0, **o}),
        "exaone4": lambda **o: tf.Exaone4Config(**{**gqa, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "olmo2": lambda **o: tf.Olmo2Config(**{**gqa, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "olmoe": lambda **o: tf.OlmoeConfig(**{**gqa, "num_experts": 4, "num_experts_per_tok": 2, "pad_token_id": 0,
                                               "bos_token_id": 0, "eos_token_id": 0, **o}),
        "jamba": lambda **o: tf.JambaConfig(**{**gqa, "num_experts": 2, "attn_layer_period": 1, "attn_layer_offset": 0,
                                               "expert_layer_period": 2, "expert_layer_offset": 1,
                                               "use_mamba_kernels": False, **o}),
        "helium": lambda **o: tf.HeliumConfig(**{**gqa, "head_dim": 16, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "llama4": lambda **o: tf.Llama4TextConfig(**{**gqa, "intermediate_size_mlp": 2 * ffn, "head_dim": 16,
                                                     "num_local_experts": 2, "interleave_moe_layer_step": 2,
                                                     "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "gptj": lambda **o: tf.GPTJConfig(**{"vocab_size": vocab, "n_embd": hidden, "n_layer": layers, "n_head": 4,
                                             "rotary_dim": 8, "n_positions": 256, "bos_token_id": 0,
                                             "eos_token_id": 0, **o}),
        "gpt_bigcode": lambda **o: tf.GPTBigCodeConfig(**{"vocab_size": vocab, "n_embd": hidden, "n_layer": layers,
                                                          "n_head": 4, "multi_query": True, "n_positions": 256,
                                                          "bos_token_id": 0, "eos_token_id": 0, **o}),
        "bloom": lambda **o: tf.BloomConfig(**{"vocab_size": vocab, "hidden_size": hidden, "n_layer": layers,
                                               "n_head": 4, "bos_token_id": 0, "eos_token_id": 0, **o}),
        "bart": lambda **o: tf.BartConfig(**{"vocab_size": vocab, "d_model": hidden, "encoder_layers": layers,
                                             "decoder_layers": layers, "encoder_attention_heads": 4,
                                             "decoder_attention_heads": 4, "encoder_ffn_dim": ffn,
                                             "decoder_ffn_dim": ffn, "max_position_embeddings": 256, **o}),
        "albert": lambda **o: tf.AlbertConfig(**{"vocab_size": vocab, "embedding_size": hidden // 2,
                                                 "hidden_size": hidden, "intermediate_size": ffn,
                                                 "num_hidden_layers": layers, "num_attention_heads": 4, **o}),
        "electra": lambda **o: tf.ElectraConfig(**{"vocab_size": vocab, "embedding_size": hidden // 2,
                                                   "hidden_size": hidden, "intermediate_size": ffn,
                                                   "num_hidden_layers": layers, "num_attention_heads": 4, **o}),
        "xlm-roberta": lambda **o: tf.XLMRobertaConfig(**{"vocab_size": vocab, "hidden_size": hidden,
                                                          "intermediate_size": ffn, "num_hidden_layers": layers,
                                                          "num_attention_heads": 4, **o}),
        "clip-text": lambda **o: tf.CLIPTextConfig(**{"vocab_size": vocab, "hidden_size": hidden,
                                                      "intermediate_size": ffn, "num_hidden_layers": layers,
                                                      "num_attention_heads": 4,
                                                      "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, **o}),
        "siglip-text": lambda **o: tf.SiglipTextConfig(**{"vocab_size": vocab, "hidden_size": hidden,
                                                          "intermediate_size": ffn, "num_hidden_layers": layers,
                                                          "num_attention_heads": 4, "bos_token_id": 0,
                                                          "eos_token_id": 2, "pad_token_id": 1, **o}),
    }


FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
                             "gpt_neox", "opt", "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "bert")
DECODERS: tuple[str, ...] = tuple(f for f in FAMILIES if f not in ENCODERS)
# More families, built the same way, that structured pruning is checked on (heads, neurons, reloading); not part of
# FAMILIES, which every method's tests run over.
MORE_FAMILIES: tuple[str, ...] = ("cohere", "starcoder2", "phi", "glm", "exaone4", "olmo2", "olmoe", "jamba", "helium",
                                  "llama4", "gptj", "gpt_bigcode", "bloom", "bart", "albert", "electra",
                                  "xlm-roberta", "clip-text", "siglip-text")
_BARE = {"siglip-text": "SiglipTextModel"}  # configs AutoModel does not map to a model
MOE: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe")


def tiny_config(family: str, vocab_size: int = 128, hidden: int = 64, layers: int = 2, **overrides: Any) -> Any:
    """The config of a tiny model of ``family`` (see :data:`FAMILIES`), with ``overrides`` applied."""
    configs = _configs(vocab_size, hidden, layers)
    if family not in configs:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES + MORE_FAMILIES)}")
    return configs[family](**overrides)


def tiny_model(family: str, vocab_size: int = 128, hidden: int = 64, layers: int = 2, seed: int = 0,
               **overrides: Any) -> nn.Module:
    """A tiny randomly initialised model of ``family`` in eval mode (no download).

    Decoders come with their LM head (``AutoModelForCausalLM``); encoders (``bert``, ``bart`` …) are the bare
    ``AutoModel`` (``BertModel``, ``BartModel``, ``CLIPTextModel`` …).
    ``overrides`` replace config fields.
    """
    import transformers as tf

    config = tiny_config(family, vocab_size, hidden, layers, **overrides)
    torch.manual_seed(seed)
    if family in _BARE:
        model = getattr(tf, _BARE[family])(config)
    else:
        model = tf.AutoModel.from_config(config) if family in ENCODERS else tf.AutoModelForCausalLM.from_config(config)
    return model.eval()


TINY_TEXT = ("The interpreter reads a line, parses it and runs it. Modules group functions and classes; "
             "a package groups modules. Exceptions unwind the stack until a handler catches them. ")


def tiny_tokenizer(text: str = TINY_TEXT, vocab_size: int = 300, **special: str) -> Any:
    """A small byte-level BPE tokenizer trained on ``text`` (a ``PreTrainedTokenizerFast`` whose
    end-of-sequence token is ``<eos>``; ``special`` adds e.g. ``bos_token="<eos>"``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", **special)


def write_tiny_folder(root: Any, model: nn.Module, tokenizer: Any, text: str = TINY_TEXT, pages: int = 30) -> Any:
    """Save ``model`` and ``tokenizer`` as ``root/model`` (a Hugging Face folder) and ``pages`` text files
    in ``root/texts`` (calibration and evaluation text); returns ``root``."""
    from pathlib import Path

    root = Path(root)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    texts = root / "texts"
    texts.mkdir(exist_ok=True)
    for i in range(pages):
        (texts / f"page{i:02d}.txt").write_text(f"Page {i}. " + text * 3)
    return root
