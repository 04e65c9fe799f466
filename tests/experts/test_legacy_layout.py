"""The per-expert ``nn.Linear`` layout of transformers 4 (and of remote-code checkpoints): a Mixtral whose
MoE blocks are transformers 4.x's ``MixtralSparseMoeBlock``, registered under its own model type so that
it saves and reloads with ``from_pretrained``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.experts import find_moe_layers, merge_experts_, prune_experts_, routed_output


class LegacyExpert(nn.Module):  # transformers 4.x MixtralBlockSparseTop2MLP
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LegacySparseMoeBlock(nn.Module):  # transformers 4.x MixtralSparseMoeBlock (router logits not returned)
    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList([LegacyExpert(config) for _ in range(self.num_experts)])

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.view(-1, h)
        weights = F.softmax(self.gate(x), dim=1, dtype=torch.float)
        weights, selected = torch.topk(weights, self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            tok, slot = torch.where(selected == e)
            if tok.numel():
                out.index_add_(0, tok, self.experts[e](x[tok]) * weights[tok, slot, None])
        return out.view(b, s, h)


@pytest.fixture(scope="module")
def legacy_cls():
    import transformers as tf

    # A Llama whose MLPs are 4.x Mixtral MoE blocks (Mixtral's own classes carry transformers 5's checkpoint
    # renaming, which does not apply to a model type of our own).
    class LegacyMixtralConfig(tf.LlamaConfig):
        model_type = "legacy_mixtral"

        def __init__(self, num_local_experts=8, num_experts_per_tok=2, **kwargs):
            self.num_local_experts = num_local_experts
            self.num_experts_per_tok = num_experts_per_tok
            super().__init__(**kwargs)

    class LegacyMixtralForCausalLM(tf.LlamaForCausalLM):
        config_class = LegacyMixtralConfig

        def __init__(self, config):
            super().__init__(config)
            for layer in self.model.layers:
                layer.mlp = LegacySparseMoeBlock(config)
            self.post_init()

    try:
        tf.AutoConfig.register("legacy_mixtral", LegacyMixtralConfig)
        tf.AutoModelForCausalLM.register(LegacyMixtralConfig, LegacyMixtralForCausalLM)
    except ValueError:  # already registered in this process
        pass
    return LegacyMixtralConfig, LegacyMixtralForCausalLM


def _model(legacy_cls):
    cfg_cls, model_cls = legacy_cls
    torch.manual_seed(0)
    config = cfg_cls(vocab_size=128, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, bos_token_id=0, eos_token_id=1)
    return model_cls(config).eval()


@torch.no_grad()
def test_per_expert_modules_found_and_routed_exactly(legacy_cls):
    model = _model(legacy_cls)
    layers = find_moe_layers(model)
    assert [l.layout for l in layers] == ["modulelist", "modulelist"]
    layer = layers[0]
    assert layer.routing.rule == "softmax_topk" and layer.routing.renormalize
    x = torch.randn(1, 16, layer.hidden_size)
    assert torch.allclose(layer.block(x).reshape(16, -1), routed_output(layer, x.reshape(16, -1)), atol=1e-5)


@pytest.mark.parametrize("merge", [False, True])
def test_per_expert_modules_prune_save_reload_generate(legacy_cls, tmp_path, merge):
    from transformers import AutoModelForCausalLM

    model = _model(legacy_cls)
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    if merge:
        report = merge_experts_(model, 0.5, calibration=calib, progress=False)
    else:
        report = prune_experts_(model, 0.5, score="reap", calibration=calib, progress=False)
    assert report.experts_after == 4 and model.config.num_local_experts == 4
    block = model.model.layers[0].mlp
    assert len(block.experts) == 4 and block.gate.out_features == 4 and block.num_experts == 4
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back.model.layers[0].mlp, LegacySparseMoeBlock)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-5)
    assert back.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 7)
