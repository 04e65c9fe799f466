"""SliceGPT (Ashkboos et al., 2024, "SliceGPT: Compress Large Language Models by Deleting Rows and
Columns"): rotate the residual stream onto its principal axes and delete the least used ones.

prunekit uses **one rotation shared by every block** (PCA of the sum of the covariances that all the
stream's norms see over the calibration tokens). Then the sliced model is a stock transformers model
with a smaller ``hidden_size`` (``head_dim`` and ``intermediate_size`` kept): ``save_pretrained``
and ``AutoModelForCausalLM.from_pretrained`` work with no extra code. The paper's per-block
rotations would need a ``d' × d'`` shortcut matrix on every residual connection, which no stock
class has (TransformerCompression's own issues #73, #114, #188).

Tied embeddings (SmolLM2): the final norm's gain cannot be fused into a head that *is* the embedding
matrix. ``head="untie"`` (the default, ``"auto"``) fuses the gain exactly into a separate head, which
costs ``vocab × d'`` parameters; ``head="tied"`` keeps the tie and fits the final norm's diagonal gain
in the rotated basis by least squares on the calibration tokens (weighted by EᵀE so every vocabulary
row counts) — smaller, but on SmolLM2 it costs far more quality than the slicing itself (see
docs/llm.md). ``rotation="per_layer"`` is the paper's form, with shortcut matrices
(:mod:`.per_layer`). A slicing whose result would have more parameters than the dense model is
refused unless ``allow_growth=True``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..calibrate.batches import calibration_batches
from ..core.config import Config
from ..core.fraction import Sparsity, check_fraction
from .layout import DecoderParts, decoder_parts
from .pca import norm_input_covariances, principal_axes


class SliceConfig(Config):
    """Settings of SliceGPT: the fraction of the residual stream's width to delete, and how."""

    slice: Literal["slicegpt"] = "slicegpt"
    sparsity: Sparsity = 0.25
    rotation: Literal["shared", "per_layer"] = "shared"
    head: Literal["auto", "tied", "untie"] = "auto"
    signal: Literal["normalized", "residual"] = "normalized"
    round_to: int = Field(8, ge=1)
    allow_growth: bool = False
    batch_size: int = Field(8, ge=1)


@dataclass
class SlicePlan:
    """What slicing will do, computed before anything changes."""

    hidden_before: int
    hidden_after: int
    tied_before: bool
    head: str  # "tied" or "untied"
    params_before: int
    params_after: int


@dataclass
class SliceReport:
    """What :func:`slice_` did: widths, parameter counts, the head's form, the variance kept, time."""

    family: str
    sparsity: float
    hidden_before: int
    hidden_after: int
    head: str
    params_before: int
    params_after: int
    kept_variance: float
    seconds: float

    @property
    def params_removed(self) -> float:
        """Fraction of all parameters removed (negative when the model grew)."""
        return 1 - self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return {**asdict(self), "params_removed": self.params_removed}

    def __str__(self) -> str:
        return (f"slicegpt ({self.family}): hidden {self.hidden_before} → {self.hidden_after} "
                f"(slicing {self.sparsity:.0%}), parameters {self.params_before:,} → {self.params_after:,} "
                f"({self.params_removed:.1%} fewer), head {self.head}, {self.kept_variance:.2%} of the stream's "
                f"variance kept, {self.seconds:.1f} s")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once


def sliced_width(hidden: int, sparsity: float, round_to: int = 8) -> int:
    """The stream's width after slicing ``sparsity`` of ``hidden``, rounded down to a multiple of ``round_to``."""
    keep = hidden - int(round(hidden * sparsity))
    keep -= keep % round_to if keep >= round_to else 0
    return max(keep, min(round_to, hidden))


def plan_slice(model: nn.Module, sparsity: float = 0.25, *, head: str = "auto", round_to: int = 8,
               allow_growth: bool = False, rotation: str = "shared") -> SlicePlan:
    """Check that ``model`` can be sliced and predict the result (parameters counted exactly, shortcut
    matrices included); changes nothing."""
    if rotation not in ("shared", "per_layer"):
        raise ValueError(f"rotation must be 'shared' or 'per_layer', got {rotation!r}")
    sparsity = check_fraction(sparsity, "sparsity", "[0, 1)",
                              hint="it is the fraction of the residual stream's width to delete")
    parts = decoder_parts(model)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise ValueError(f"{name} carries masks or another parametrization; slicing rotates every weight and "
                             "would destroy them. Slice the dense model (and prune it afterwards), or finalize_ first")
    d, d2 = parts.hidden, sliced_width(parts.hidden, sparsity, round_to)
    form = "untied" if head in ("auto", "untie") else "tied"
    if form == "tied" and not parts.tied:
        raise ValueError("head='tied' asks to keep a tie, but this model's LM head is not tied to its embeddings")
    if form == "tied" and rotation == "per_layer":
        raise ValueError("per-layer rotations read the embeddings in the first basis and the head in the last, so "
                         "the head cannot stay tied; use head='untie' (or 'auto'), or rotation='shared'")
    before = _count(model)
    after = before
    for b in parts.blocks:
        for lin in b.readers:
            after -= lin.weight.numel() - lin.out_features * d2
        for lin in b.writers:
            after -= lin.weight.numel() - d2 * lin.in_features
            if lin.bias is not None:
                after -= d - d2
        after -= 2 * (d - d2)
    after -= parts.embed.weight.numel() - parts.embed.num_embeddings * d2 + (d - d2)  # embeddings, final norm
    if not parts.tied:
        after -= parts.head.weight.numel() - parts.head.out_features * d2
    elif form == "untied":
        after += parts.head.out_features * d2
    if rotation == "per_layer":
        after += 2 * len(parts.blocks) * d2 * d2  # the shortcut matrices
    plan = SlicePlan(d, d2, parts.tied, form, before, after)
    if after > before and not allow_growth:
        raise ValueError(
            f"slicing {sparsity:.0%} of the stream ({d} → {d2}) with {'a tied' if form == 'tied' else 'an untied'} "
            f"head{' and 2 shortcut matrices per block' if rotation == 'per_layer' else ''} gives {after:,} parameters, more than the dense model's {before:,}: the model would grow. "
            "Slice more, keep the head tied (head='tied'), or pass allow_growth=True"
        )
    return plan


def slice_(model: nn.Module, config: SliceConfig | dict | None = None, *, calibration: Any = None,
           progress: bool = True, **fields: Any) -> SliceReport:
    """Slice ``model`` in place with SliceGPT and return a :class:`SliceReport`.

    ``config`` (or the keyword ``fields`` of :class:`SliceConfig`: ``sparsity``, ``head``, ``signal``,
    ``round_to``, ``allow_growth``, ``batch_size``) says how; ``calibration`` is token ids
    ``(nsamples, seqlen)``. Everything is checked before the model changes.
    """
    cfg = config if isinstance(config, SliceConfig) else SliceConfig.parse(config or {}, **fields)
    if isinstance(config, SliceConfig) and fields:
        cfg = config.replace(**fields)
    start = time.perf_counter()
    plan = plan_slice(model, cfg.sparsity, head=cfg.head, round_to=cfg.round_to, allow_growth=cfg.allow_growth,
                      rotation=cfg.rotation)
    if calibration is None:
        raise ValueError("slicing needs calibration=: token ids (nsamples, seqlen), e.g. from "
                         "prunekit.datasets.text.calibration_windows(tokenizer, 'pydocs', nsamples=32, seqlen=512)")
    calibration_batches(calibration, cfg.batch_size, tokens=True)
    parts = decoder_parts(model)
    d2 = plan.hidden_after
    if plan.head == "tied":
        g = parts.final_norm.weight.detach().float()
        spread = float(g.std() / g.abs().mean().clamp_min(1e-12))
        if spread > 0.01:
            warnings.warn(f"head='tied' only approximates the final norm's gain in the rotated basis (its spread here "
                          f"is {spread:.0%} of its mean); on SmolLM2 this alone took perplexity from 10.8 to 73. "
                          "Measure it, or use head='untie'", stacklevel=2)
    if cfg.rotation == "per_layer":
        from .per_layer import mark_config_, rotate_and_slice_per_layer_

        kept = rotate_and_slice_per_layer_(model, parts, calibration, d2, signal=cfg.signal,
                                           batch_size=cfg.batch_size)
        _update_config(model, parts.hidden, d2, untied=True)
        mark_config_(model)
    else:
        covs = norm_input_covariances(model, parts.norms, calibration, batch_size=cfg.batch_size, signal=cfg.signal,
                                      progress=progress)
        values, axes = principal_axes(sum(covs))
        q = axes[:, :d2]
        kept = float(values[:d2].sum() / values.sum())
        _rotate_and_slice_(model, parts, q, covs[-1], plan.head)
    return SliceReport(parts.family, cfg.sparsity, plan.hidden_before, d2,
                       plan.head + (" + shortcut matrices" if cfg.rotation == "per_layer" else ""),
                       plan.params_before, _count(model), kept, time.perf_counter() - start)


def _new_param(old: nn.Parameter, value: Tensor) -> nn.Parameter:
    return nn.Parameter(value.to(device=old.device, dtype=old.dtype).contiguous(), requires_grad=old.requires_grad)


def fitted_final_gain(embed: Tensor, gain: Tensor, cov: Tensor, q: Tensor) -> Tensor:
    """The diagonal gain w (d') that makes ``E q diag(w) qᵀ n`` closest to ``E diag(gain) n`` in least squares over
    the final norm's normalised inputs n (covariance ``cov``), for a head tied to the rotated embeddings ``E q``."""
    e = embed.double()
    m = e.t() @ e  # EᵀE: every vocabulary row weighs the same
    qm = q.t() @ m
    a = (qm @ q) * (q.t() @ cov @ q)
    b = torch.diagonal(qm @ (gain.double().reshape(-1, 1) * cov) @ q)
    a += torch.eye(a.shape[0], dtype=a.dtype) * (1e-9 * torch.diagonal(a).mean())
    return torch.linalg.solve(a, b)


def _rotate_and_slice_(model: nn.Module, parts: DecoderParts, q: Tensor, final_cov: Tensor, head: str) -> None:
    """Fuse the norms' gains into the readers, rotate every reader and writer by ``q`` (d × d'), update the config."""
    d, d2 = q.shape
    scale = math.sqrt(d / d2)  # a norm over d' entries divides by sqrt(d'), not sqrt(d)
    with torch.no_grad():
        e_old = parts.embed.weight.detach().double()
        g_final = parts.final_norm.weight.detach().double()
        for b in parts.blocks:
            for norm, readers in ((b.attn_norm, b.attn_in), (b.mlp_norm, b.mlp_in)):
                g = norm.weight.detach().double()
                for lin in readers:
                    lin.weight = _new_param(lin.weight, (lin.weight.detach().double() * g) @ q)
                    lin.in_features = d2
                norm.weight = _new_param(norm.weight, torch.full((d2,), scale, dtype=torch.float64))
            for lin in b.writers:
                lin.weight = _new_param(lin.weight, q.t() @ lin.weight.detach().double())
                if lin.bias is not None:
                    lin.bias = _new_param(lin.bias, q.t() @ lin.bias.detach().double())
                lin.out_features = d2
        parts.embed.weight = _new_param(parts.embed.weight, e_old @ q)
        parts.embed.embedding_dim = d2
        if head == "tied":
            gain = fitted_final_gain(e_old, g_final, final_cov, q)
            parts.head.weight = parts.embed.weight
        else:
            gain = torch.ones(d2, dtype=torch.float64)
            parts.head.weight = _new_param(parts.head.weight, (parts.head.weight.detach().double() * g_final) @ q)
        parts.head.in_features = d2
        parts.final_norm.weight = _new_param(parts.final_norm.weight, gain * scale)
    _update_config(model, d, d2, untied=head == "untied")


def _update_config(model: nn.Module, d: int, d2: int, untied: bool) -> None:
    """The config of the sliced model: ``hidden_size`` d', ``head_dim`` kept, the tie as it now is."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    config.head_dim = int(head_dim)
    config.hidden_size = d2
    if untied:
        config.tie_word_embeddings = False
        text = getattr(config, "get_text_config", lambda: config)()
        text.tie_word_embeddings = False
