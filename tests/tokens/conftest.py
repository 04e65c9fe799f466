"""Tiny random models of every family the token patches support (built from configs, no download)."""

import sys
import types

import pytest
import torch

# torchvision's PyPI build is a CUDA build whose C ops do not load beside the CPU torch; timm imports it.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)


def timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)
    args.update(kw)
    return VisionTransformer(**args).eval()


def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(**SMALL, image_size=32, patch_size=4, num_labels=5)).eval()


def hf_deit():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    return DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, image_size=32, patch_size=4, num_labels=5)).eval()


def hf_clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(**SMALL, image_size=32, patch_size=4)).eval()


def hf_bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**SMALL, vocab_size=100)).eval()


def hf_roberta():
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig(**SMALL, vocab_size=100)).eval()


def tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    args = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=200, max_position_embeddings=256)
    args.update(kw)
    return LlamaForCausalLM(LlamaConfig(**args)).eval()


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=128, vocab_size=200, max_position_embeddings=256)).eval()


VISION = {"timm-vit": timm_vit, "hf-vit": hf_vit, "hf-deit": hf_deit, "hf-clip-vision": hf_clip_vision}
TEXT = {"hf-bert": hf_bert, "hf-roberta": hf_roberta}


def run(model, x):
    """The model's main output tensor for input ``x`` (pixels, or (ids, mask) for text)."""
    with torch.no_grad():
        if isinstance(x, tuple):
            return model(input_ids=x[0], attention_mask=x[1]).last_hidden_state
        out = model(x) if not hasattr(model, "config") else model(pixel_values=x)
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise AssertionError("no output tensor")


def inputs_for(name):
    g = torch.Generator().manual_seed(1)
    if name in TEXT:
        ids = torch.randint(5, 100, (3, 24), generator=g)
        mask = torch.ones(3, 24, dtype=torch.long)
        mask[1, 18:] = 0
        mask[2, 10:] = 0
        return ids, mask
    return torch.randn(2, 3, 32, 32, generator=g)


@pytest.fixture(params=sorted(VISION) + sorted(TEXT))
def family(request):
    name = request.param
    factory = {**VISION, **TEXT}[name]
    torch.manual_seed(0)
    return name, factory(), inputs_for(name)
