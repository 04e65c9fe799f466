"""Where the residual stream of a decoder is read and written: the parts SliceGPT rotates.

A pre-norm decoder (Llama, Mistral, Qwen2, Qwen3) reads its residual stream through RMSNorms into
the attention inputs (q/k/v) and the MLP inputs (gate/up), and writes it from the embeddings, the
attention output (o) and the MLP output (down); the final norm feeds the LM head. Rotating the
stream by an orthogonal Q changes none of the outputs once the norms' gains are fused into the
linears that read them (RMS normalisation is rotation-invariant), so deleting the stream's least
used directions is the only approximation.

Families whose stock transformers class cannot express a smaller stream are refused with the
reason: OPT and GPT-2 derive the attention width from ``hidden_size`` (there is no separate
``head_dim``), BERT normalises after the residual add (post-norm), Gemma normalises the blocks'
outputs before they join the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# model_type → stock class that reloads a sliced folder (config.hidden_size smaller, head_dim kept).
SLICEABLE = ("llama", "mistral", "qwen2", "qwen3")
WHY_NOT = {
    "opt": "OPT's attention width is hidden_size (its config has no head_dim), so the stock OPT class cannot "
           "hold a residual stream narrower than its attention",
    "gpt2": "GPT-2's attention width is n_embd (its config has no head_dim) and its qkv projection is fused, so "
            "the stock GPT-2 class cannot hold a residual stream narrower than its attention",
    "bert": "BERT normalises after the residual add (post-norm), which is not invariant to a rotation of the stream",
    "gemma": "Gemma normalises each block's output before it joins the stream (and scales the embeddings by "
             "sqrt(hidden_size)), which is not invariant to a rotation of the stream",
    "gemma2": "Gemma 2 normalises each block's output before it joins the stream, which is not invariant to a "
              "rotation of the stream",
    "gemma3": "Gemma 3 normalises each block's output before it joins the stream, which is not invariant to a "
              "rotation of the stream",
    "gemma3_text": "Gemma 3 normalises each block's output before it joins the stream, which is not invariant to a "
                   "rotation of the stream",
}


@dataclass
class BlockParts:
    """One pre-norm block: the norm and linears that read the stream, the linears that write it."""

    name: str
    attn_norm: nn.Module
    attn_in: list[nn.Linear]
    attn_out: nn.Linear
    mlp_norm: nn.Module
    mlp_in: list[nn.Linear]
    mlp_out: nn.Linear

    @property
    def readers(self) -> list[nn.Linear]:
        return self.attn_in + self.mlp_in

    @property
    def writers(self) -> list[nn.Linear]:
        return [self.attn_out, self.mlp_out]


@dataclass
class DecoderParts:
    """A whole decoder's stream: embeddings, blocks, final norm, LM head, and whether head and embeddings are tied."""

    family: str
    hidden: int
    embed: nn.Embedding
    blocks: list[BlockParts]
    final_norm: nn.Module
    head: nn.Linear
    tied: bool

    @property
    def norms(self) -> list[nn.Module]:
        """Every norm that reads the stream, in execution order (2 per block, then the final one)."""
        out: list[nn.Module] = []
        for b in self.blocks:
            out += [b.attn_norm, b.mlp_norm]
        return out + [self.final_norm]


def _norm_ok(norm: nn.Module, hidden: int) -> bool:
    w = getattr(norm, "weight", None)
    return (w is not None and tuple(w.shape) == (hidden,) and getattr(norm, "bias", None) is None
            and any(hasattr(norm, a) for a in ("variance_epsilon", "eps")))


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The stream's readers and writers in a supported decoder; a ValueError saying why for any other model."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SLICEABLE:
        why = WHY_NOT.get(kind, "prunekit does not know where this family reads and writes its residual stream")
        raise ValueError(
            f"slicing (SliceGPT) cannot handle model family {kind!r} ({type(model).__name__}): {why}. "
            f"Supported: {', '.join(SLICEABLE)}; for other families use --structured neurons|heads, or masks"
        )
    inner = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if inner is None or not isinstance(head, nn.Linear) or not isinstance(getattr(inner, "embed_tokens", None),
                                                                           nn.Embedding):
        raise ValueError(f"slicing needs a causal LM ({kind}ForCausalLM) with model.embed_tokens and lm_head; "
                         f"got {type(model).__name__}")
    hidden = int(config.hidden_size)
    blocks = []
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        parts = BlockParts(f"model.layers.{i}", layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj],
                           attn.o_proj, layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], mlp.down_proj)
        for norm in (parts.attn_norm, parts.mlp_norm):
            if not _norm_ok(norm, hidden):
                raise ValueError(f"{parts.name}: expected an RMSNorm of width {hidden} without bias, got {norm}")
        blocks.append(parts)
    if not _norm_ok(inner.norm, hidden):
        raise ValueError(f"model.norm: expected an RMSNorm of width {hidden} without bias, got {inner.norm}")
    tied = head.weight is inner.embed_tokens.weight
    return DecoderParts(kind, hidden, inner.embed_tokens, blocks, inner.norm, head, tied)
