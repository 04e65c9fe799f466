"""DIMAP: data-independent module-aware weight importance for hierarchical ViTs (He & Zhou, ICLR 2024,
"Data-independent Module-aware Pruning for Hierarchical Vision Transformers").

Plain magnitude compares a window-attention weight of stage 1 with one of stage 4 on one global scale, although
the stages' weights have different distributions (and, after each patch merging, inputs of different norms).
DIMAP groups the layers into *modules* — in each stage, the attention QKV layers (QKV-M), the attention output
projections (PRJ-M), the MLP layers (MLP-M) and the auxiliary layers (AUX-M: patch merging, position-bias MLPs,
anything else) — and scores a weight by the share of its module's information distortion it carries:

    Imp(w) = w² / Σ_{v in the module, |v| ≥ |w|} v²

(the module's weights sorted by magnitude, largest first, and the sum taken up to ``w``). The score depends on
the weights alone — no images, so nothing depends on the patch-merging layers' inputs — is unchanged by scaling
a module, keeps the magnitude order inside each module, and is ranked globally across modules (``DimapConfig``'s
default allocation). With one module per layer (``modules="layer"``) it is LAMP's score.
"""

from __future__ import annotations

import re
from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from ..core.scope import Target
from .base import ScoreContext, effective, register_criterion

Grouping = Literal["stage", "network", "layer"]
GROUPINGS: tuple[str, ...] = ("stage", "network", "layer")

# The role of a layer in a (Swin-style) block, from its qualified name; the first rule that matches wins.
# timm: attn.qkv, attn.proj, mlp.fc1/fc2, downsample.reduction, attn.cpb_mlp.*; Hugging Face Swin:
# attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense, downsample.reduction.
_ROLE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aux", re.compile(r"(^|\.)(downsample|patch_embed|embeddings|cpb_mlp|head|norm)(\.|$)")),
    ("qkv", re.compile(r"(^|\.)(qkv|query|key|value|q_proj|k_proj|v_proj|q|k|v)$")),
    ("proj", re.compile(r"(^|\.)(attn\.proj|attention\.output\.dense|o_proj|out_proj)$")),
    ("mlp", re.compile(r"(^|\.)(mlp|intermediate|output|ffn)(\.|$)|(^|\.)(fc1|fc2)$")),
)
_STAGE = re.compile(r"(?:^|\.)(?:layers|stages)\.(\d+)(?:\.|$)")


def module_role(name: str) -> str:
    """The DIMAP module kind of layer ``name``: ``qkv``, ``proj``, ``mlp`` or ``aux`` (anything else)."""
    for role, rule in _ROLE_RULES:
        if rule.search(name):
            return role
    return "aux"


def stage_of(name: str) -> str:
    """The hierarchical stage a layer belongs to (``layers.<i>`` / ``stages.<i>`` in its name), or ``-``."""
    found = _STAGE.search(name)
    return found.group(1) if found else "-"


def module_of(name: str, grouping: str = "stage") -> str:
    """The module layer ``name`` is compared within: ``stage`` (the paper's: one module per stage and role),
    ``network`` (one per role across the stages) or ``layer`` (each layer alone: LAMP)."""
    if grouping == "stage":
        return f"stage {stage_of(name)} / {module_role(name)}"
    if grouping == "network":
        return module_role(name)
    if grouping == "layer":
        return name
    raise ValueError(f"unknown DIMAP grouping {grouping!r}; use one of {', '.join(GROUPINGS)}")


def dimap_scores(weights: Mapping[str, Tensor], modules: Mapping[str, str]) -> dict[str, Tensor]:
    """DIMAP's importance of every entry of ``weights`` (name → tensor), each compared within its module
    (``modules``: name → module key): w² over the sum of the squares of the module's weights at least as large.
    Tied magnitudes get one score; an all-zero module scores 0."""
    groups: dict[str, list[str]] = {}
    for name in weights:
        groups.setdefault(modules[name], []).append(name)
    out: dict[str, Tensor] = {}
    for names in groups.values():
        flat = [weights[n].detach().reshape(-1).double().cpu().square() for n in names]
        sq = torch.cat(flat)
        ordered = torch.sort(sq).values
        below = torch.cumsum(ordered, 0) - ordered  # below[i]: the sum of the squares sorted before position i
        first = torch.searchsorted(ordered, sq, right=False)  # first position of each value among the sorted
        denom = float(ordered.sum()) - below[first]  # Σ_{v ≥ w} v², ties included
        score = sq / denom.clamp_min(torch.finfo(torch.float64).tiny)
        start = 0
        for n, f in zip(names, flat):
            out[n] = score[start:start + f.numel()].reshape(weights[n].shape).float()
            start += f.numel()
    return out


@register_criterion("dimap")
def dimap(model: nn.Module, targets: list[Target], ctx: ScoreContext) -> dict[str, Tensor]:
    """Score each weight by DIMAP's module-normalised distortion share (data-free); the module grouping is the
    method config's ``modules`` (``stage`` without one)."""
    grouping = getattr(ctx.config, "modules", "stage")
    weights = {t.name: effective(t) for t in targets}
    return dimap_scores(weights, {t.name: module_of(t.name, grouping) for t in targets})
