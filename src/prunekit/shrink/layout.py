"""Where the residual stream's width (``hidden_size``) lives in a Hugging Face decoder.

Every parameter of a supported model is given a *role* before anything is cut: the embedding and an
untied LM head hold the width in their columns, residual norms in their only dimension, the q/k/v and
gate/up projections read it (their input columns), the o and down projections write it (their output
rows, with their biases). Query/key norms (Qwen3, Gemma 3) and the q/k/v biases act on head
dimensions and are untouched. A parameter that fits no role, or a module that breaks the pattern,
makes the whole model refused — with one line naming it — before anything changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

# model_type → whether the embedding is multiplied by sqrt(hidden_size) and whether norms scale by (1 + w)
FAMILIES: dict[str, dict[str, bool]] = {
    "llama": {"gemma": False},
    "mistral": {"gemma": False},
    "qwen2": {"gemma": False},
    "qwen3": {"gemma": False},
    "gemma": {"gemma": True},
    "gemma2": {"gemma": True},
    "gemma3_text": {"gemma": True},
}

EMBED = "embed"       # (vocab, H): columns
HEAD = "head"         # (vocab, H): columns (untied LM head)
NORM = "norm"         # (H,)
READ = "read"         # (out, H): input columns
WRITE = "write"       # (H, in) and bias (H,): output rows
KEEP = "keep"         # no dimension of width H

_LAYER = r"model\.layers\.\d+\."
_RULES: list[tuple[str, str]] = [
    (r"model\.embed_tokens\.weight", EMBED),
    (r"lm_head\.weight", HEAD),
    (r"model\.norm\.weight", NORM),
    (_LAYER + r"(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)"
     r"\.weight", NORM),
    (_LAYER + r"self_attn\.(q_proj|k_proj|v_proj)\.weight", READ),
    (_LAYER + r"mlp\.(gate_proj|up_proj)\.weight", READ),
    (_LAYER + r"self_attn\.(o_proj)\.(weight|bias)", WRITE),
    (_LAYER + r"mlp\.(down_proj)\.(weight|bias)", WRITE),
    (_LAYER + r"self_attn\.(q_proj|k_proj|v_proj)\.bias", KEEP),
    (_LAYER + r"mlp\.(gate_proj|up_proj)\.bias", KEEP),
    (_LAYER + r"self_attn\.(q_norm|k_norm)\.weight", KEEP),
]


@dataclass
class WidthLayout:
    """The roles of every parameter of a decoder whose residual width can be cut consistently."""

    model_type: str
    hidden: int
    gemma: bool
    tied: bool
    roles: dict[str, str]
    norms: list[str] = field(default_factory=list)  # modules whose outputs are the normalised residual stream

    def names(self, role: str) -> list[str]:
        """The parameter names with ``role``."""
        return [n for n, r in self.roles.items() if r == role]


def _role(name: str) -> str | None:
    for pattern, role in _RULES:
        if re.fullmatch(pattern, name):
            return role
    return None


def supported() -> str:
    """The families whose width :func:`width_layout` accepts, as text for error messages."""
    return ", ".join(sorted(FAMILIES))


def width_layout(model: nn.Module) -> WidthLayout:
    """The roles of ``model``'s parameters for residual-width pruning; a ValueError (one line, naming what is
    wrong) for a family or layout that cannot be cut consistently. Changes nothing."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type not in FAMILIES:
        raise ValueError(f"residual-width pruning supports the Hugging Face decoders {supported()}; "
                         f"{name} (model_type {model_type!r}) is not one of them")
    if not name.endswith("ForCausalLM"):
        raise ValueError(f"residual-width pruning needs the causal LM class (…ForCausalLM, with its LM head); got {name}")
    hidden = int(config.hidden_size)
    broken = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if broken:
        raise ValueError(f"{name} holds pruning masks ({broken[0]} …); bake them in first "
                         "(prunekit.core.mask.finalize_) or shrink the dense model")
    roles: dict[str, str] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        role = _role(pname)
        if role is None:
            raise ValueError(f"{name} has a parameter residual-width pruning does not know: {pname} "
                             f"{tuple(p.shape)}; it cuts only the Llama-style layouts of {supported()}")
        roles[pname] = role
    tied = "lm_head.weight" not in dict(model.named_parameters()) or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for pname, role in roles.items():
        p = model.get_parameter(pname)
        dim = {EMBED: 1, HEAD: 1, NORM: 0, READ: 1, WRITE: 0}.get(role)
        if dim is not None and (p.dim() <= dim or p.shape[dim] != hidden):
            raise ValueError(f"{name}.{pname} has shape {tuple(p.shape)}, not the residual width {hidden} where "
                             "residual-width pruning expects it; the layout is not Llama-style")
        if role == KEEP and hidden in p.shape and not pname.endswith(("_proj.bias", "norm.weight")):
            raise ValueError(f"{name}.{pname} has a dimension of the residual width {hidden}; refusing to cut "
                             "around it")
    if "model.embed_tokens.weight" not in roles or "model.norm.weight" not in roles:
        raise ValueError(f"{name} has no model.embed_tokens / model.norm; the layout is not Llama-style")
    for mname, m in model.named_modules():
        if isinstance(m, nn.Linear) and not any(k.startswith(mname + ".") for k in roles):
            raise ValueError(f"{name}.{mname} is a Linear layer outside the known layout")
    norms = sorted({n.rsplit(".", 1)[0] for n in roles if roles[n] == NORM})
    return WidthLayout(str(model_type), hidden, FAMILIES[str(model_type)]["gemma"], bool(tied), roles, norms)


def config_change(config: Any, **fields: Any) -> str | None:
    """Why the config class refuses ``config`` with ``fields`` changed (its own validation, e.g. Llama's
    ``hidden_size % num_attention_heads``), or None when it accepts it; ``config`` is not changed."""
    data = config.to_dict()
    data.update(fields)
    data.pop("transformers_version", None)
    try:
        type(config)(**data)
    except Exception as exc:  # noqa: BLE001 - a config class's validation raises many kinds of error
        cause = getattr(exc, "__cause__", None)
        return str(cause or exc).strip().splitlines()[-1]
    return None


def head_dim_of(config: Any) -> int:
    """The attention head size the model uses (explicit ``head_dim``, else hidden_size / heads)."""
    d = getattr(config, "head_dim", None)
    return int(d) if d else int(config.hidden_size) // int(config.num_attention_heads)


def is_tied(model: nn.Module) -> bool:
    """Whether the LM head shares the input embedding's tensor."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight
