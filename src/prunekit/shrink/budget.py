"""Shapes of a decoder and what they cost: the budget a shrink aims at, and exact parameter counts.

A :class:`Shape` is the uniform architecture of a Llama-style decoder (width, heads, key/value heads, head
size, MLP width, blocks). Its parameters are counted exactly from the roles of the model's own tensors
(:mod:`.layout`), so biases, query/key norms and untied heads are counted as the model has them.

Budgets (:class:`Target`):

- ``params=F``: the *non-embedding* parameters of the result (every parameter except the input embedding
  and the LM head, tied or not — the count Minitron and the scaling-law papers use) are at most ``F`` times
  the dense model's.
- ``memory=F``: the bytes of all the weights (embedding and head included, a tied tensor once, at the
  model's dtype) are at most ``F`` times the dense model's. This is the memory the weights take when
  loaded and on disk before any quantization; it leaves out the KV cache and activations.
- ``speed=S`` (S ≥ 1): the decode time per token, *measured* on this machine (:mod:`.latency`), is at most
  the dense model's divided by S — ``speed=1.5`` is 1.5× the dense model's decode speed. Searched per
  layer only (:mod:`.search_layers`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from torch import nn

from .layout import head_dim_of, width_layout

KINDS = ("params", "memory", "speed")


@dataclass(frozen=True)
class Target:
    """A budget: ``kind`` (``params`` or ``memory``) and the fraction of the dense model's kept."""

    kind: str
    fraction: float

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


def parse_target(text: str | Target) -> Target:
    """``"params=0.6"`` / ``"memory=0.5"`` / ``"speed=1.5"`` → :class:`Target`; one clear error for anything else."""
    if isinstance(text, Target):
        return text
    m = re.fullmatch(r"\s*([a-z]+)\s*=\s*([0-9.eE+-]+)\s*", str(text))
    if not m:
        raise ValueError(f"target must look like params=0.6 or memory=0.5 (the fraction of the dense model kept) or "
                         f"speed=1.5 (times the dense model's measured decode speed), got {text!r}")
    kind, value = m.group(1), m.group(2)
    if kind not in KINDS:
        raise ValueError(f"unknown target {kind!r}: use params= (non-embedding parameters), memory= (weight bytes) "
                         "or speed= (measured decode speed)")
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"target {kind}= needs a number, got {value!r}") from None
    if kind == "speed":
        if not (f >= 1 and f < float("inf")):
            raise ValueError(f"target speed={value} must be a finite number ≥ 1: the speed-up over the dense model's "
                             "measured decode speed")
        return Target(kind, f)
    if not 0 < f <= 1:
        raise ValueError(f"target {kind}={value} must be in (0, 1]: the fraction of the dense model kept")
    return Target(kind, f)


@dataclass(frozen=True)
class Shape:
    """A uniform decoder architecture."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int

    def to_dict(self) -> dict[str, int]:
        """The shape as plain data."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"hidden {self.hidden}, {self.heads} heads / {self.kv_heads} kv × {self.head_dim}, "
                f"MLP {self.ffn}, {self.layers} blocks")

    def with_(self, **fields: int) -> "Shape":
        """A copy with ``fields`` changed."""
        return replace(self, **fields)


def shape_of(model: nn.Module) -> Shape:
    """The current shape of a supported decoder (see :func:`prunekit.shrink.layout.width_layout`)."""
    c = model.config
    return Shape(int(c.hidden_size), int(c.num_attention_heads), int(getattr(c, "num_key_value_heads", None)
                                                                        or c.num_attention_heads),
                 head_dim_of(c), int(c.intermediate_size), int(c.num_hidden_layers))


@dataclass(frozen=True)
class Counter:
    """Counts the parameters of any shape of one model family, from the roles of the model's tensors."""

    layer_terms: tuple[tuple[str, str], ...]  # (name suffix in block 0, role)
    vocab: int
    tied: bool

    @classmethod
    def of(cls, model: nn.Module) -> "Counter":
        """The counter of ``model``'s family (the model must pass :func:`width_layout`)."""
        layout = width_layout(model)
        terms = tuple((n[len("model.layers.0."):], r) for n, r in layout.roles.items() if n.startswith("model.layers.0."))
        return cls(terms, int(model.config.vocab_size), layout.tied)

    def _term(self, suffix: str, s: Shape) -> int:
        q, kv, d, H, F = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim, s.hidden, s.ffn
        sizes = {"q_proj.weight": q * H, "k_proj.weight": kv * H, "v_proj.weight": kv * H, "o_proj.weight": H * q,
                 "q_proj.bias": q, "k_proj.bias": kv, "v_proj.bias": kv, "o_proj.bias": H,
                 "gate_proj.weight": F * H, "up_proj.weight": F * H, "down_proj.weight": H * F,
                 "gate_proj.bias": F, "up_proj.bias": F, "down_proj.bias": H, "q_norm.weight": d, "k_norm.weight": d}
        leaf = ".".join(suffix.split(".")[-2:])
        if leaf in sizes:
            return sizes[leaf]
        if suffix.endswith("layernorm.weight"):
            return H
        raise ValueError(f"cannot count parameter {suffix}")  # width_layout admits nothing else

    def non_embedding(self, s: Shape) -> int:
        """Every parameter but the input embedding and the LM head."""
        return s.layers * sum(self._term(n, s) for n, _ in self.layer_terms) + s.hidden  # + the final norm

    def embedding(self, s: Shape) -> int:
        """The input embedding and, when untied, the LM head."""
        return self.vocab * s.hidden * (1 if self.tied else 2)

    def total(self, s: Shape) -> int:
        """Every parameter, a tied tensor once."""
        return self.non_embedding(s) + self.embedding(s)

    def measure(self, s: Shape, target: Target) -> int:
        """What ``target`` counts for shape ``s``."""
        return self.non_embedding(s) if target.kind == "params" else self.total(s)


def non_embedding_params(model: nn.Module) -> int:
    """The parameters of ``model`` other than its input embedding and LM head (tied counted once)."""
    skip = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        skip.add(id(out.weight))
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if id(p) not in skip}.values())

