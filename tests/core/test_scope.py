import pytest
from torch import nn

from prunekit.core.scope import Scope, select_targets
from prunekit.models import MLP, ResNetStyle, SmallCNN


def test_default_scope_skips_first_conv_and_output_layer():
    names = [t.name for t in select_targets(ResNetStyle())]
    assert "stem.0" not in names and "fc" not in names
    assert "layer1.0.conv1" in names and "layer3.1.conv2" in names and "layer2.0.downsample.0" in names
    assert len(names) == 14  # 12 block convs + 2 downsample convs


def test_linear_only_model_skips_its_head():
    assert [t.name for t in select_targets(MLP())] == ["body.0", "body.2"]


def test_include_exclude_globs_and_types():
    model = ResNetStyle()
    only3 = [t.name for t in select_targets(model, ["layer3.*"])]
    assert only3 and all(n.startswith("layer3.") for n in only3)
    no_ds = [t.name for t in select_targets(model, Scope(exclude=["*downsample*"]))]
    assert not any("downsample" in n for n in no_ds)
    everything = select_targets(model, {"skip_first_conv": False, "skip_output": False})
    assert {"stem.0", "fc"} <= {t.name for t in everything}
    linear = select_targets(model, Scope(types=(nn.Linear,), skip_output=False))
    assert [t.name for t in linear] == ["fc"]


def test_scope_matching_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match="matches no prunable tensor"):
        select_targets(SmallCNN(), ["decoder.*"])
    with pytest.raises(ValueError, match="unknown scope option"):
        select_targets(SmallCNN(), {"inclde": ["x"]})


def test_hf_lm_head_tied_and_output_are_skipped():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg)
    names = [t.name for t in select_targets(model)]
    assert "lm_head" not in names and not any("embed" in n for n in names)
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per layer
    # a base model without a head keeps all its Linear layers
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    bnames = [t.name for t in select_targets(bert)]
    assert "encoder.layer.0.output.dense" in bnames and "pooler.dense" in bnames


def test_a_conv_inside_a_block_list_is_not_taken_for_the_stem():
    # Mamba's blocks each hold a conv1d: skipping "the first conv" left block 0's out of scope and block 1's in
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, groups=4)
            self.proj = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv1d(2, 4, 3)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(4, 2)

    with_stem = [t.name for t in select_targets(Net())]
    assert with_stem == ["blocks.0.conv", "blocks.0.proj", "blocks.1.conv", "blocks.1.proj"]
    net = Net()
    net.stem = nn.Identity()
    assert [t.name for t in select_targets(net)] == with_stem
