"""The encoder families token merging and attention pruning know, and how each one's layer splits
into an attention half and an MLP half (the tokens are reduced between the two, as ToMe does).

Each adapter re-runs the layer with the layer's own submodules — the attention module's own forward,
so its fused kernel (``scaled_dot_product_attention`` under timm's ``fused_attn`` and transformers'
``sdpa``) still runs, with the proportional-attention bias passed as the additive mask it already
accepts. A layer that reduces nothing and sees no bias computes exactly what the original does.

Supported (checked against timm 1.0.31 and transformers 5.24):

- ``timm-vit``: timm ``VisionTransformer`` (ViT, DeiT, DeiT-distilled, register tokens) with plain
  ``Block`` / ``Attention`` layers;
- ``hf-vit`` / ``hf-deit``: ``ViTModel`` / ``DeiTModel`` (and their ``…ForImageClassification``);
- ``hf-clip-vision``: ``CLIPVisionModel`` (alone or inside ``CLIPModel``; the text tower is left as is);
- ``hf-bert``: ``BertModel`` / ``RobertaModel`` encoders (not decoders), e.g. all-MiniLM-L6-v2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ENCODER_FAMILIES = ("timm-vit", "hf-vit", "hf-deit", "hf-clip-vision", "hf-bert")
DECODER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_DECODER_NAMES = ("Llama", "Mistral", "Qwen2", "Qwen3")  # as a user reads them, in DECODER_FAMILIES' order


class UnsupportedModel(ValueError):
    """The model (or one of its layers) is not a family the token patches know."""


def _supported_line() -> str:
    return (f"supported encoders: {', '.join(ENCODER_FAMILIES)} (timm VisionTransformer; Hugging Face ViT, "
            f"DeiT, CLIP vision, BERT/RoBERTa); supported decoders (method='fastv'): {', '.join(DECODER_FAMILIES)}")


class Adapter:
    """How to run one family's layer in two halves, and where its queries and keys come from."""

    family: str = ""
    kind: str = "vision"  # or "text"

    def attention_half(self, layer: nn.Module, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def mlp_half(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def qk_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The modules whose outputs are the layer's queries and keys."""
        raise NotImplementedError

    def heads(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """A query/key module's output as (B, H, N, D)."""
        raise NotImplementedError

    def scale(self, layer: nn.Module) -> float:
        raise NotImplementedError

    def split_args(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        """The hidden states and the attention mask the encoder passed to a layer."""
        h = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        return h, mask


class TimmViT(Adapter):
    family = "timm-vit"

    def attention_half(self, layer, h, bias):
        return h + layer.drop_path1(layer.ls1(layer.attn(layer.norm1(h), attn_mask=bias)))

    def mlp_half(self, layer, h):
        return h + layer.drop_path2(layer.ls2(layer.mlp(layer.norm2(h))))

    def qk_modules(self, layer):
        return layer.attn.q_norm, layer.attn.k_norm

    def heads(self, layer, out):
        return out

    def scale(self, layer):
        return float(layer.attn.scale)

    def split_args(self, args, kwargs):
        h = args[0] if args else kwargs["x"]
        mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
        if kwargs.get("is_causal") or (len(args) > 2 and args[2]):
            raise UnsupportedModel("token patches do not support timm blocks run with is_causal=True")
        return h, mask


class HFViT(Adapter):
    family = "hf-vit"

    def attention_half(self, layer, h, bias):
        out, _ = layer.attention(layer.layernorm_before(h), bias)
        return layer.dropout(out) + h

    def mlp_half(self, layer, h):
        return layer.dropout(layer.mlp(layer.layernorm_after(h))) + h

    def qk_modules(self, layer):
        return layer.attention.q_proj, layer.attention.k_proj

    def heads(self, layer, out):
        b, n, _ = out.shape
        return out.view(b, n, -1, layer.attention.head_dim).transpose(1, 2)

    def scale(self, layer):
        return float(layer.attention.scaling)


class HFDeiT(HFViT):
    family = "hf-deit"


class HFCLIPVision(Adapter):
    family = "hf-clip-vision"

    def attention_half(self, layer, h, bias):
        out, _ = layer.self_attn(hidden_states=layer.layer_norm1(h), attention_mask=bias)
        return h + out

    def mlp_half(self, layer, h):
        return h + layer.mlp(layer.layer_norm2(h))

    def qk_modules(self, layer):
        return layer.self_attn.q_proj, layer.self_attn.k_proj

    def heads(self, layer, out):
        b, n, _ = out.shape
        return out.view(b, n, -1, layer.self_attn.head_dim).transpose(1, 2)

    def scale(self, layer):
        return float(layer.self_attn.scale)


class HFBert(Adapter):
    family = "hf-bert"
    kind = "text"

    def attention_half(self, layer, h, bias):
        out, _ = layer.attention(h, bias)
        return out

    def mlp_half(self, layer, h):
        from transformers.pytorch_utils import apply_chunking_to_forward

        return apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, h)

    def qk_modules(self, layer):
        return layer.attention.self.query, layer.attention.self.key

    def heads(self, layer, out):
        b, n, _ = out.shape
        return out.view(b, n, -1, layer.attention.self.attention_head_size).transpose(1, 2)

    def scale(self, layer):
        return float(layer.attention.self.scaling)

    def split_args(self, args, kwargs):
        h, mask = super().split_args(args, kwargs)
        enc = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        if enc is not None:
            raise UnsupportedModel("token patches do not support BERT layers with cross-attention")
        return h, mask


@dataclass
class EncoderSite:
    """Where an encoder's layers are, what they are, and which leading tokens are protected."""

    family: str
    adapter: Adapter
    owner: nn.Module          # the module holding the layer list (its name in ``owner_name``)
    owner_name: str
    layers: list[nn.Module]
    protected: int            # class / distillation / register tokens, never merged or dropped
    tokens: int | None        # tokens entering layer 0 at the nominal input size (None for text)
    pooling: str              # "token" (class token), "avg" (mean of tokens) or "sequence" (text)


def _cls_name(obj: Any) -> str:
    return type(obj).__name__


def _timm_site(name: str, model: nn.Module) -> EncoderSite:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    blocks = list(model.blocks)
    for i, blk in enumerate(blocks):
        if type(blk).forward is not Block.forward or not isinstance(blk, Block):
            raise UnsupportedModel(f"timm block {i} is a {_cls_name(blk)}; token patches support timm's plain "
                                   f"vision_transformer.Block (the model's class is {_cls_name(model)})")
        if type(blk.attn).forward is not Attention.forward:
            raise UnsupportedModel(f"timm block {i} uses {_cls_name(blk.attn)}; token patches support timm's "
                                   "plain layers.Attention")
    tokens = None
    if not getattr(model, "dynamic_img_size", False) and getattr(model.patch_embed, "num_patches", None):
        tokens = int(model.patch_embed.num_patches) + int(model.num_prefix_tokens)
    pool = "token" if model.global_pool == "token" else ("avg" if model.global_pool in ("avg", "avgmax") else model.global_pool or "none")
    return EncoderSite("timm-vit", TimmViT(), model, name, blocks, int(model.num_prefix_tokens), tokens, pool)


def _hf_vision_tokens(config: Any, prefix: int) -> int | None:
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not isinstance(size, int) or not isinstance(patch, int):
        return None
    return (size // patch) ** 2 + prefix


def _encoder_site(name: str, module: nn.Module) -> EncoderSite | None:
    cls = _cls_name(module)
    if cls == "VisionTransformer" and type(module).__module__.startswith("timm."):
        return _timm_site(name, module)
    if cls == "VisionTransformerDistilled" and type(module).__module__.startswith("timm."):
        return _timm_site(name, module)
    if cls in ("ViTModel", "DeiTModel"):
        adapter = HFViT() if cls == "ViTModel" else HFDeiT()
        prefix = 1 if cls == "ViTModel" else 2
        expected = "ViTLayer" if cls == "ViTModel" else "DeiTLayer"
        _check_layers(module.layers, expected, cls)
        return EncoderSite(adapter.family, adapter, module, name, list(module.layers), prefix,
                           _hf_vision_tokens(module.config, prefix), "token")
    if cls == "CLIPVisionModel":
        _check_layers(module.encoder.layers, "CLIPEncoderLayer", cls)
        return EncoderSite("hf-clip-vision", HFCLIPVision(), module, name, list(module.encoder.layers), 1,
                           _hf_vision_tokens(module.config, 1), "token")
    if cls in ("BertModel", "RobertaModel"):
        if module.config.is_decoder or module.config.add_cross_attention:
            raise UnsupportedModel(f"{cls} is configured as a decoder (is_decoder/add_cross_attention); token "
                                   "patches support BERT-style encoders")
        _check_layers(module.encoder.layer, cls.replace("Model", "Layer"), cls)
        return EncoderSite("hf-bert", HFBert(), module, name, list(module.encoder.layer), 1, None, "sequence")
    return None


def _check_layers(layers: nn.ModuleList, expected: str, owner: str) -> None:
    for i, layer in enumerate(layers):
        if _cls_name(layer) != expected:
            raise UnsupportedModel(f"{owner} layer {i} is a {_cls_name(layer)}, expected {expected}")


def find_encoder(model: nn.Module) -> EncoderSite:
    """The encoder inside ``model`` that token merging / attention pruning patch; an
    :class:`UnsupportedModel` error naming the supported families otherwise."""
    for name, module in model.named_modules():
        site = _encoder_site(name, module)
        if site is not None:
            return site
    if find_decoder_layers(model, strict=False) is not None:
        raise UnsupportedModel(f"{_cls_name(model)} is a decoder language model: token merging and encoder "
                               "attention pruning do not apply; use prune_(model, method='fastv', keep=…, layer=…)")
    raise UnsupportedModel(f"no supported encoder found in {_cls_name(model)}; {_supported_line()}")


def find_decoder_layers(model: nn.Module, strict: bool = True) -> tuple[str, nn.Module, str] | None:
    """(name, decoder module holding ``layers``, family) of a supported decoder LLM inside ``model``,
    or None (strict=False) / an :class:`UnsupportedModel` error (strict=True)."""
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        family = getattr(config, "model_type", None)
        layers = getattr(module, "layers", None)
        if family in DECODER_FAMILIES and isinstance(layers, nn.ModuleList) and hasattr(module, "rotary_emb"):
            return name, module, family
    if strict:
        try:
            site = find_encoder(model)
        except UnsupportedModel:
            site = None
        if site is not None:
            raise UnsupportedModel(f"{_cls_name(model)} is an encoder ({site.family}): method='fastv' prunes "
                                   "decoder prompts; use merge_(model, r=…) or prune_(model, method='attention')")
        family = getattr(getattr(model, "config", None), "model_type", None)
        named = f"{_cls_name(model)} ({family})" if family else _cls_name(model)
        raise UnsupportedModel(f"FastV supports {', '.join(_DECODER_NAMES)} decoders; {named} is not one of them "
                               f"(for encoders and vision models: {', '.join(ENCODER_FAMILIES)}, "
                               "with method='attention' or merge_)")
    return None


def is_generative(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face model that generates text (a decoder LM: Llama, Mixtral, GPT-2, …)."""
    can_generate = getattr(model, "can_generate", None)
    try:
        return bool(callable(can_generate) and can_generate())
    except Exception:  # a custom model's can_generate that needs more than itself
        return False
