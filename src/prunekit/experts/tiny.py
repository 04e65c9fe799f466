"""Small randomly initialised mixture-of-experts models of real transformers families (tests, examples)."""

from __future__ import annotations

import torch
from torch import nn

MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")


def tiny_moe_config(family: str, *, experts: int = 8, top_k: int = 2, layers: int = 2, hidden: int = 32,
                    vocab_size: int = 128, intermediate: int = 24, **overrides):
    """The config of a small MoE model of ``family`` (one of :data:`MOE_FAMILIES`). DeepSeek-V3 gets two
    routing groups (``n_group=2, topk_group=1``) and a dense first layer, Qwen2-MoE a shared expert."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, num_experts_per_tok=top_k,
                  bos_token_id=0, eos_token_id=1, pad_token_id=None)
    builders = {
        "mixtral": lambda: tf.MixtralConfig(intermediate_size=intermediate, num_local_experts=experts, **common),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(intermediate_size=2 * intermediate, moe_intermediate_size=intermediate,
                                               shared_expert_intermediate_size=2 * intermediate, num_experts=experts,
                                               **common),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(intermediate_size=2 * intermediate, moe_intermediate_size=intermediate,
                                               num_experts=experts, head_dim=hidden // 4, norm_topk_prob=True, **common),
        "olmoe": lambda: tf.OlmoeConfig(intermediate_size=intermediate, num_experts=experts, **common),
        "deepseek_v3": lambda: tf.DeepseekV3Config(
            intermediate_size=2 * intermediate, moe_intermediate_size=intermediate, n_routed_experts=experts,
            n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
            qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=hidden // 4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common),
        "gpt_oss": lambda: tf.GptOssConfig(intermediate_size=intermediate, num_local_experts=experts,
                                           head_dim=hidden // 4, layer_types=["full_attention"] * layers, **common),
    }
    if family not in builders:
        raise ValueError(f"unknown MoE family {family!r}; known: {', '.join(MOE_FAMILIES)}")
    config = builders[family]()
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def tiny_moe(family: str, seed: int = 0, **kwargs) -> nn.Module:
    """A small randomly initialised MoE causal LM of ``family`` (eval mode); ``kwargs`` go to :func:`tiny_moe_config`."""
    import transformers as tf

    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(tiny_moe_config(family, **kwargs)).eval()
