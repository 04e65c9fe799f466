"""Residual width (``hidden_size``) of Hugging Face encoders — BERT-style text encoders (BERT, RoBERTa; e.g.
all-MiniLM-L6-v2) and ViT — cut consistently in every parameter that holds it.

Every parameter gets a role before anything is cut (:func:`encoder_layout`): embeddings (word, position, token type;
ViT's patch projection, cls / mask token and position embeddings) hold the width in their last dimension (the
projection in its output channels), LayerNorms in their only one, q/k/v and the intermediate layer read it
(input columns), the attention output and the output projection write it (rows, with their biases); the pooler
and a classifier read it. A parameter that fits no role refuses the whole model, in one line, before any change.

Attention keeps its own width where the config can say so: ViT reads ``head_dim`` from its config, so every head
stays whole and ``head_dim`` is written explicitly; BERT computes the head size as hidden_size / heads, so there the
width is cut together with whole heads (``hidden_size`` must be a multiple of the head size; the heads kept are
``hidden_size / head size`` per layer, chosen by importance: the norm of each head's contribution to the
stream). BERT's pooler writes the width too (its output shrinks); ViT's pooler keeps its output size
(``pooler_output_size`` written explicitly).

LayerNorm is where the cut is not exact. It subtracts the mean and divides by the standard deviation over the
channels it sees; after the cut those are the kept channels' mean and deviation, not the full width's. When the
removed channels are exactly zero and the stream has zero mean over the channels (then the kept channels' mean is 0
too), the only change is the deviation, by exactly √(H/K), and it is undone by scaling the gains. In general
``rescale_norms`` (with calibration inputs) corrects each LayerNorm to first order from measurements on the
calibration data: its gain by √(E[var_K] / E[var_H]) (the deviation over the kept channels against the full one) and
its bias by gain · E[(μ_K − μ_H) / σ_H] (the mean's shift); what remains is the per-input variation of those ratios
(measured on all-MiniLM-L6-v2 in the README).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..infra.calling import call_model
from .layout import config_change

IMPORTANCES = ("activation", "magnitude")

# role → the dimensions of the parameter that hold the residual width
_EMB = (1,)        # (n, H) tables
_VEC = (0,)        # (H,) norms and writer biases
_READ = (1,)       # (out, H) Linear weights
_WRITE = (0,)      # (H, in) Linear weights; conv (H, C, p, p)
_LAST = (2,)       # (1, n, H) ViT tokens and positions
_BOTH = (0, 1)     # BERT's pooler (H, H)
_KEEP = ()

_BERT = [
    (r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight", _EMB, "embed"),
    (r"embeddings\.LayerNorm\.(weight|bias)", _VEC, "norm"),
    (r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.weight", _READ, "qkv"),
    (r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.bias", _KEEP, "qkv"),
    (r"encoder\.layer\.\d+\.attention\.output\.dense\.(weight|bias)", _WRITE, "o"),
    (r"encoder\.layer\.\d+\.(attention\.output|output)\.LayerNorm\.(weight|bias)", _VEC, "norm"),
    (r"encoder\.layer\.\d+\.intermediate\.dense\.weight", _READ, "read"),
    (r"encoder\.layer\.\d+\.intermediate\.dense\.bias", _KEEP, "keep"),
    (r"encoder\.layer\.\d+\.output\.dense\.(weight|bias)", _WRITE, "write"),
    (r"pooler\.dense\.weight", _BOTH, "pooler"),
    (r"pooler\.dense\.bias", _VEC, "pooler"),
    (r"classifier\.weight", _READ, "read"),
    (r"classifier\.bias", _KEEP, "keep"),
]
_VIT = [
    (r"embeddings\.(cls_token|mask_token|position_embeddings)", _LAST, "embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", _WRITE, "write"),
    (r"layers\.\d+\.(layernorm_before|layernorm_after)\.(weight|bias)", _VEC, "norm"),
    (r"layernorm\.(weight|bias)", _VEC, "norm"),
    (r"layers\.\d+\.attention\.(q_proj|k_proj|v_proj)\.weight", _READ, "qkv"),
    (r"layers\.\d+\.attention\.(q_proj|k_proj|v_proj)\.bias", _KEEP, "qkv"),
    (r"layers\.\d+\.attention\.o_proj\.(weight|bias)", _WRITE, "o"),
    (r"layers\.\d+\.mlp\.fc1\.weight", _READ, "read"),
    (r"layers\.\d+\.mlp\.fc1\.bias", _KEEP, "keep"),
    (r"layers\.\d+\.mlp\.fc2\.(weight|bias)", _WRITE, "write"),
    (r"pooler\.dense\.weight", _READ, "read"),
    (r"pooler\.dense\.bias", _KEEP, "keep"),
    (r"classifier\.(weight)", _READ, "read"),
    (r"classifier\.bias", _KEEP, "keep"),
]
# model_type → (rules, the prefix of the bare model inside task classes, whether heads go with the width)
FAMILIES: dict[str, tuple[list, tuple[str, ...], bool]] = {
    "bert": (_BERT, ("bert.",), True),
    "roberta": (_BERT, ("roberta.",), True),
    "xlm-roberta": (_BERT, ("roberta.",), True),
    "vit": (_VIT, ("vit.",), False),
}


@dataclass
class EncoderLayout:
    """Every parameter's width dimensions, the LayerNorms, and, for BERT-style models, the attention blocks."""

    model_type: str
    hidden: int
    heads: int
    head_dim: int
    heads_with_width: bool
    dims: dict[str, tuple[int, ...]]
    roles: dict[str, str]
    norms: list[str]
    attentions: list[tuple[str, str]] = field(default_factory=list)  # (q/k/v owner, output dense) per layer


def _match(rules: list, name: str, prefixes: tuple[str, ...]) -> tuple[tuple[int, ...], str] | None:
    for prefix in ("", *prefixes):
        if prefix and not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        for pattern, dims, role in rules:
            if re.fullmatch(pattern, rest):
                return dims, role
    return None


def supported() -> str:
    """The model types :func:`encoder_layout` accepts, for error messages."""
    return ", ".join(sorted(FAMILIES))


def encoder_layout(model: nn.Module) -> EncoderLayout:
    """The width dimensions of every parameter of ``model``; a ValueError naming what cannot be cut. Changes nothing."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type not in FAMILIES:
        raise ValueError(f"encoder width pruning supports the Hugging Face encoders {supported()}; {name} "
                         f"(model_type {model_type!r}) is not one of them (decoders: prunekit.shrink.prune_hidden_)")
    rules, prefixes, with_heads = FAMILIES[str(model_type)]
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError(f"{name} holds pruning masks; bake them in first (prunekit.core.mask.finalize_)")
    H = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or H // heads)
    dims: dict[str, tuple[int, ...]] = {}
    roles: dict[str, str] = {}
    for pname, p in model.named_parameters():
        found = _match(rules, pname, prefixes)
        if found is None:
            raise ValueError(f"{name} has a parameter encoder width pruning does not know: {pname} {tuple(p.shape)}; "
                             f"it cuts the {supported()} layouts (base model, classifier, pooler)")
        d, role = found
        if any(p.dim() <= i or p.shape[i] != H for i in d):
            raise ValueError(f"{name}.{pname} has shape {tuple(p.shape)}, not the width {H} where expected")
        dims[pname], roles[pname] = d, role
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not any(k.startswith(mname + ".") for k in dims):
            raise ValueError(f"{name}.{mname} is a layer outside the known layout")
    norms = sorted({n.rsplit(".", 1)[0] for n, r in roles.items() if r == "norm"})
    attentions = []
    if with_heads:
        for n in sorted({n.rsplit(".", 2)[0] for n, r in roles.items() if r == "qkv"}):  # …attention.self
            attentions.append((n, n.rsplit(".", 1)[0] + ".output.dense"))
    return EncoderLayout(str(model_type), H, heads, head_dim, with_heads, dims, roles, norms, attentions)


@dataclass
class EncoderWidthReport:
    """What :func:`prune_encoder_width_` did."""

    hidden_before: int
    hidden_after: int
    heads_before: int
    heads_after: int
    importance: str
    params_before: int
    params_after: int
    rescaled_norms: bool
    notes: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # the residual channels kept (old indices, ascending)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        heads = (f", heads {self.heads_before} → {self.heads_after} per layer" if self.heads_after != self.heads_before
                 else "")
        text = (f"encoder width {self.hidden_before} → {self.hidden_after}{heads} by {self.importance}"
                f"{', LayerNorms corrected' if self.rescaled_norms else ''}; parameters {self.params_before:,} → "
                f"{self.params_after:,}")
        return "; ".join([text, *self.notes])


def _batches(calibration: Any) -> list[Any]:
    if calibration is None:
        return []
    if isinstance(calibration, (Tensor, dict)):
        return [calibration]
    if isinstance(calibration, (list, tuple)) and calibration:
        return list(calibration)
    raise ValueError("calibration must be model inputs: a tensor (pixel_values), a dict (input_ids, attention_mask) "
                     f"or a list of them; got {type(calibration).__name__}")


def _mask_of(batch: Any) -> Tensor | None:
    return batch.get("attention_mask") if isinstance(batch, dict) else None


@torch.no_grad()
def _statistics(model: nn.Module, layout: EncoderLayout, calibration: Any, keep: Tensor | None = None
                ) -> dict[str, Any]:
    """Over the calibration inputs' real tokens (padding left out): Σ over LayerNorms of the mean |output| per
    channel, per head the mean norm of its contribution to the stream, and — given ``keep`` — per LayerNorm
    E[var_H], E[var_K] and E[(μ_K − μ_H)/σ_H] of its input."""
    H = layout.hidden
    score = torch.zeros(H, dtype=torch.float64)
    head_score = {o: torch.zeros(layout.heads, dtype=torch.float64) for _, o in layout.attentions}
    qkv_sq = {f"{a}.{p}": torch.zeros(layout.heads * layout.head_dim, dtype=torch.float64)
              for a, _ in layout.attentions for p in ("query", "key", "value")}
    moments = {n: torch.zeros(3, dtype=torch.float64) for n in layout.norms}
    count = {"tokens": 0}
    current: dict[str, Tensor | None] = {"mask": None}

    def rows(t: Tensor) -> Tensor:
        t = t.detach().double().reshape(-1, t.shape[-1]) if t.dim() > 1 else t.detach().double()[None]
        m = current["mask"]
        if m is not None and m.numel() == t.shape[0]:
            t = t[m.reshape(-1).bool()]
        return t

    def norm_hook(name: str):
        def run(mod: nn.Module, args: tuple, out: Tensor) -> None:
            y, x = rows(out), rows(args[0])
            score.add_(y.abs().sum(0))
            if keep is not None:
                mu_h, var_h = x.mean(-1), x.var(-1, unbiased=False)
                xk = x[:, keep]
                mu_k, var_k = xk.mean(-1), xk.var(-1, unbiased=False)
                sd_h = (var_h + mod.eps).sqrt()
                moments[name] += torch.stack([var_h.sum(), var_k.sum(), ((mu_k - mu_h) / sd_h).sum()])
            if name == layout.norms[0]:
                count["tokens"] += y.shape[0]
        return run

    def head_hook(name: str, weight: Tensor):
        def run(mod: nn.Module, args: tuple, out: Tensor) -> None:
            x = rows(args[0])  # (tokens, heads · head_dim)
            w = weight.detach().double()
            for h in range(layout.heads):
                s = slice(h * layout.head_dim, (h + 1) * layout.head_dim)
                head_score[name][h] += (x[:, s] @ w[:, s].T).norm(dim=-1).sum()
        return run

    def sq_hook(name: str):
        def run(mod: nn.Module, args: tuple, out: Tensor) -> None:
            qkv_sq[name] += rows(out).square().sum(0)
        return run

    handles = [model.get_submodule(n).register_forward_hook(norm_hook(n)) for n in layout.norms]
    handles += [model.get_submodule(n).register_forward_hook(sq_hook(n)) for n in qkv_sq]
    for _, o in layout.attentions:
        dense = model.get_submodule(o)
        handles.append(dense.register_forward_hook(head_hook(o, dense.weight)))
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(calibration):
            current["mask"] = _mask_of(batch)
            call_model(model, batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n = max(count["tokens"], 1)
    if not count["tokens"]:
        raise ValueError("the calibration inputs reached no LayerNorm; cannot measure the encoder's channels")
    return {"score": score / n, "heads": {k: v / n for k, v in head_score.items()},
            "qkv": {k: v / n for k, v in qkv_sq.items()},
            "moments": {k: v / n for k, v in moments.items()}}


def _magnitude(model: nn.Module, layout: EncoderLayout) -> tuple[Tensor, dict[str, Tensor]]:
    score = torch.zeros(layout.hidden, dtype=torch.float64)
    for pname, d in layout.dims.items():
        p = model.get_parameter(pname).detach().double()
        if layout.roles[pname] == "norm" and pname.endswith("weight"):
            score += p.square()
            continue
        for i in d:
            score += p.square().sum(dim=[j for j in range(p.dim()) if j != i]) if p.dim() > 1 else p.square()
    heads, qkv = {}, {}
    for a, o in layout.attentions:
        for proj in ("query", "key", "value"):
            qkv[f"{a}.{proj}"] = model.get_submodule(f"{a}.{proj}").weight.detach().double().square().sum(1)
        w = model.get_submodule(o).weight.detach().double()
        heads[o] = torch.stack([w[:, h * layout.head_dim:(h + 1) * layout.head_dim].norm()
                                for h in range(layout.heads)])
    return score, heads, qkv


def _cut(p: Tensor, dim: int, keep: Tensor) -> Tensor:
    return p.detach().index_select(dim, keep.to(p.device)).clone()


def _set(model: nn.Module, name: str, value: Tensor, like: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, nn.Parameter(value, requires_grad=like.requires_grad))


ATTENTIONS = ("heads", "head_dim")


def plan_encoder_width(model: nn.Module, hidden_size: int, attention: str | None = None) -> EncoderLayout:
    """Every check of :func:`prune_encoder_width_` (layout, width, heads, the config class's validation); changes
    nothing."""
    layout = encoder_layout(model)
    H = layout.hidden
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or not 1 <= hidden_size <= H:
        raise ValueError(f"hidden_size must be an int in [1, {H}] (the current width), got {hidden_size!r}")
    if attention is not None and attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention is not None and not layout.heads_with_width:
        raise ValueError(f"{layout.model_type} keeps its attention whole (head_dim is written to its config); "
                         "attention= applies to BERT-style models only")
    if layout.heads_with_width and (attention or "heads") == "heads" and hidden_size % layout.head_dim:
        raise ValueError(f"{layout.model_type} computes its head size as hidden_size / heads, so the width is cut with "
                         f"whole heads of {layout.head_dim}: hidden_size must be a multiple of {layout.head_dim}, got "
                         f"{hidden_size} (e.g. {max(layout.head_dim, hidden_size // layout.head_dim * layout.head_dim)}"
                         "), or keep every head with attention='head_dim'")
    if layout.heads_with_width and attention == "head_dim" and hidden_size % layout.heads:
        raise ValueError(f"attention='head_dim' keeps all {layout.heads} heads, each hidden_size / {layout.heads} wide: "
                         f"hidden_size must be a multiple of {layout.heads}, got {hidden_size}")
    why = config_change(model.config, **_config_fields(model, layout, hidden_size, attention))
    if why:
        raise ValueError(f"hidden_size {hidden_size} gives a config {type(model.config).__name__} refuses ({why})")
    return layout


def _config_fields(model: nn.Module, layout: EncoderLayout, hidden: int, attention: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"hidden_size": hidden}
    if layout.heads_with_width:
        if (attention or "heads") == "heads":
            fields["num_attention_heads"] = hidden // layout.head_dim
    else:
        fields["head_dim"] = layout.head_dim
        if layout.model_type == "vit":
            fields["pooler_output_size"] = int(getattr(model.config, "pooler_output_size", None) or layout.hidden)
    return fields


@torch.no_grad()
def prune_encoder_width_(model: nn.Module, hidden_size: int | None = None, *, sparsity: float | None = None,
                         importance: str = "activation", calibration: Any = None, rescale_norms: bool = True,
                         keep: Iterable[int] | None = None, keep_heads: dict[int, Iterable[int]] | None = None,
                         attention: str | None = None) -> EncoderWidthReport:
    """Cut the residual width of a Hugging Face encoder (BERT, RoBERTa, ViT) to ``hidden_size`` channels (or remove
    ``sparsity`` of them), in place: every embedding, LayerNorm, projection, the pooler and a classifier alike, the
    config following, so the model saves and reloads with stock ``from_pretrained``. Channels (and, for BERT-style
    models, whole heads) are ranked by ``importance``: ``activation`` (mean |LayerNorm output| over ``calibration``
    inputs; head contributions' norms) or ``magnitude``; ``keep`` / ``keep_heads`` ({layer: heads}) name them
    instead. ``rescale_norms`` corrects the LayerNorms for the channels removed (needs ``calibration``; see the
    module docstring). ``attention`` (BERT-style models, whose head size is hidden_size / heads): ``heads`` (the
    default) removes whole heads with the width, ``head_dim`` keeps every head and cuts each to hidden_size / heads
    (the query/key dimensions with the largest √(E[q²]·E[k²]), the value dimensions with the largest
    √E[v²]·|output column|; queries rescaled for the new 1/√head_size). Refused, before any change, for a layout
    it cannot cut."""
    layout = encoder_layout(model)
    H = layout.hidden
    if (hidden_size is None) == (sparsity is None) and keep is None:
        raise ValueError("pass hidden_size= (the width kept) or sparsity= (the fraction of channels removed)")
    if sparsity is not None:
        if not 0 <= float(sparsity) < 1:
            raise ValueError(f"sparsity must be in [0, 1), the fraction of channels removed; got {sparsity}")
        hidden_size = H - math.floor(H * float(sparsity) + 1e-9)
        if layout.heads_with_width:
            step = layout.heads if attention == "head_dim" else layout.head_dim
            hidden_size = max(step, round(hidden_size / step) * step)
    given = None
    if keep is not None:
        given = torch.tensor(sorted({int(i) for i in keep}), dtype=torch.long)
        if given.numel() == 0 or int(given.min()) < 0 or int(given.max()) >= H:
            raise ValueError(f"keep must name channels in [0, {H}), at least one")
        if hidden_size is not None and hidden_size != given.numel():
            raise ValueError(f"keep names {given.numel()} channels but hidden_size is {hidden_size}")
        hidden_size = given.numel()
    assert hidden_size is not None
    plan_encoder_width(model, hidden_size, attention)
    by_dim = attention == "head_dim"
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "activation" and calibration is None and given is None:
        raise ValueError("importance='activation' ranks channels on data: pass calibration= model inputs (or "
                         "importance='magnitude')")
    n_heads = hidden_size // layout.head_dim if layout.heads_with_width and not by_dim else layout.heads
    if keep_heads is not None and by_dim:
        raise ValueError("keep_heads names whole heads; attention='head_dim' keeps every head")
    if keep_heads is not None:
        bad = [i for i, hs in keep_heads.items() if len(set(hs)) != n_heads or not all(0 <= h < layout.heads for h in hs)]
        if bad or set(keep_heads) != set(range(len(layout.attentions))):
            raise ValueError(f"keep_heads must name {n_heads} heads in [0, {layout.heads}) for each of the "
                             f"{len(layout.attentions)} layers")
    before = sum(p.numel() for p in model.parameters())
    if hidden_size == H:
        return EncoderWidthReport(H, H, layout.heads, layout.heads, importance, before, before, False,
                                  ["nothing removed: the width is unchanged"], list(range(H)))
    if importance == "activation" and calibration is not None:
        stats = _statistics(model, layout, calibration)
        scores, head_scores, qkv_scores = stats["score"], stats["heads"], stats["qkv"]
    else:
        scores, head_scores, qkv_scores = _magnitude(model, layout)
    kept = given if given is not None else torch.sort(
        torch.argsort(scores, descending=True, stable=True)[:hidden_size]).values
    corrections = None
    if rescale_norms and calibration is not None:
        corrections = _statistics(model, layout, calibration, kept)["moments"]
    notes = []
    if rescale_norms and calibration is None:
        notes.append("LayerNorms not corrected: no calibration inputs to measure them on")
    # heads (BERT-style): the rows of q/k/v and the columns of the output dense of the heads kept
    if by_dim:
        _cut_head_dims_(model, layout, hidden_size // layout.heads, qkv_scores)
    for i, (qkv, o) in enumerate(layout.attentions):
        if not layout.heads_with_width or n_heads == layout.heads:
            break
        if keep_heads is not None:
            hs = torch.tensor(sorted(set(keep_heads[i])))
        else:
            hs = torch.sort(torch.argsort(head_scores[o], descending=True, stable=True)[:n_heads]).values
        idx = (hs[:, None] * layout.head_dim + torch.arange(layout.head_dim)).reshape(-1)
        for proj in ("query", "key", "value"):
            lin = model.get_submodule(f"{qkv}.{proj}")
            lin.weight = nn.Parameter(_cut(lin.weight, 0, idx), requires_grad=lin.weight.requires_grad)
            if lin.bias is not None:
                lin.bias = nn.Parameter(_cut(lin.bias, 0, idx), requires_grad=lin.bias.requires_grad)
        dense = model.get_submodule(o)
        dense.weight = nn.Parameter(_cut(dense.weight, 1, idx), requires_grad=dense.weight.requires_grad)
    for pname, d in layout.dims.items():
        p = model.get_parameter(pname)
        value = p.detach()
        for dim in d:
            value = _cut(value, dim, kept)
        _set(model, pname, value, p)
    if corrections is not None:
        for n in layout.norms:
            var_h, var_k, shift = (float(v) for v in corrections[n])
            norm = model.get_submodule(n)
            gain = math.sqrt((var_k + norm.eps) / (var_h + norm.eps))
            if norm.bias is not None:
                norm.bias.add_(norm.weight * shift)  # the mean's shift, at the gain it was measured with
            norm.weight.mul_(gain)
    _fix_sizes(model, H, hidden_size, layout, by_dim)
    for k, v in _config_fields(model, layout, hidden_size, attention).items():
        setattr(model.config, k, v)
    return EncoderWidthReport(H, hidden_size, layout.heads, n_heads, importance if given is None else "given", before,
                              sum(p.numel() for p in model.parameters()), corrections is not None, notes, kept.tolist())


def _cut_head_dims_(model: nn.Module, layout: EncoderLayout, new_dim: int, qkv_scores: dict[str, Tensor]) -> None:
    """Keep ``new_dim`` of every head's query/key dimensions (the same for both) and of its value dimensions (and
    the output dense's columns that read them); queries rescaled so that 1/√head_size stays what it was."""
    d = layout.head_dim
    for a, o in layout.attentions:
        dense = model.get_submodule(o)
        col = dense.weight.detach().double().square().sum(0).sqrt()
        qk = (qkv_scores[f"{a}.query"] * qkv_scores[f"{a}.key"]).sqrt()
        v = qkv_scores[f"{a}.value"].sqrt() * col
        picks = {}
        for name, score in (("qk", qk), ("v", v)):
            idx = [h * d + torch.sort(torch.argsort(score[h * d:(h + 1) * d], descending=True, stable=True)[:new_dim]
                                      ).values for h in range(layout.heads)]
            picks[name] = torch.cat(idx)
        for proj, key in (("query", "qk"), ("key", "qk"), ("value", "v")):
            lin = model.get_submodule(f"{a}.{proj}")
            scale = math.sqrt(new_dim / d) if proj == "query" else 1.0
            lin.weight = nn.Parameter(_cut(lin.weight, 0, picks[key]) * scale, requires_grad=lin.weight.requires_grad)
            if lin.bias is not None:
                lin.bias = nn.Parameter(_cut(lin.bias, 0, picks[key]) * scale, requires_grad=lin.bias.requires_grad)
        dense.weight = nn.Parameter(_cut(dense.weight, 1, picks["v"]), requires_grad=dense.weight.requires_grad)


def _fix_sizes(model: nn.Module, before: int, after: int, layout: EncoderLayout, by_dim: bool = False) -> None:
    """The size attributes modules keep beside their tensors."""
    n_heads = after // layout.head_dim if layout.heads_with_width and not by_dim else layout.heads
    head_size = after // layout.heads if by_dim else layout.head_dim
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = m.weight.shape[1]
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.Conv2d):
            m.out_channels = m.weight.shape[0]
        if hasattr(m, "all_head_size") and layout.heads_with_width:
            m.num_attention_heads = n_heads
            m.all_head_size = n_heads * head_size
            if hasattr(m, "attention_head_size"):
                m.attention_head_size = head_size
            if hasattr(m, "scaling"):
                m.scaling = head_size ** -0.5
        if getattr(m, "hidden_size", None) == before and not isinstance(m.hidden_size, bool):
            m.hidden_size = after
