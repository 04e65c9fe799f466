"""Residual / embedding width pruning (``hidden_size``) of Hugging Face decoders, as Minitron does it.

Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation")
ranks the embedding channels by their activations: the mean |output| of every norm that reads the
residual stream, over calibration tokens, summed over the norms (``importance="activation"``).
``"magnitude"`` ranks them by the weights instead: the squared weights that read or write each
channel (embedding column, norm gains, projection columns and rows, untied head column), summed.

The channels kept are cut from every parameter that holds the width (see :mod:`.layout`), in the same
order everywhere; the config's ``hidden_size`` follows and ``head_dim`` is written explicitly, so the
model reloads with stock ``from_pretrained``. Two corrections keep the function close to the dense
model's: Gemma's embedding scale (√hidden_size) changes with the width, so the embedding is rescaled
(and, when the head is tied to it, the final norm's gain back) to give the same vectors as before; and
with ``rescale_norms`` each norm's gain is multiplied by the measured ratio of its input's RMS over the
kept channels to its RMS over all channels (on calibration tokens), since an RMS norm divides by the
RMS of whatever channels remain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .layout import EMBED, HEAD, NORM, READ, WRITE, WidthLayout, config_change, head_dim_of, is_tied, width_layout

IMPORTANCES = ("activation", "magnitude")
_DIM = {EMBED: 1, HEAD: 1, NORM: 0, READ: 1, WRITE: 0}


@dataclass
class HiddenPruneReport:
    """What :func:`prune_hidden_` did."""

    hidden_before: int
    hidden_after: int
    importance: str
    params_before: int
    params_after: int
    rescaled_norms: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        text = (f"hidden width {self.hidden_before} → {self.hidden_after} by {self.importance}"
                f"{', norm gains rescaled' if self.rescaled_norms else ''}; parameters "
                f"{self.params_before:,} → {self.params_after:,}")
        return "; ".join([text, *self.notes])


def param_count(model: nn.Module) -> int:
    """Parameters of ``model``, a tied tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def token_batches(calibration: Any, batch_size: int = 4) -> list[Tensor]:
    """Calibration token ids as a list of (b, seqlen) batches: a (n, seqlen) tensor is split, a list kept."""
    if isinstance(calibration, Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.int64, torch.int32) or calibration.numel() == 0:
            raise ValueError(f"calibration must be token ids of shape (n, seqlen), got {calibration.dtype} "
                             f"{tuple(calibration.shape)}")
        return list(calibration.long().split(batch_size))
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(c, Tensor) for c in calibration):
        return [b for c in calibration for b in token_batches(c, batch_size)]
    raise ValueError("calibration must be token ids (a (n, seqlen) tensor or a list of them), e.g. "
                     f"prunekit.datasets.text.calibration_windows(tokenizer); got {type(calibration).__name__}")


@torch.no_grad()
def norm_statistics(model: nn.Module, layout: WidthLayout, calibration: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Over the calibration tokens: the Minitron score of each channel (Σ over residual norms of the mean
    |output|) and, per norm, the mean square of each input channel."""
    modules = {n: model.get_submodule(n) for n in layout.norms}
    out_abs = {n: torch.zeros(layout.hidden, dtype=torch.float64) for n in modules}
    in_sq = {n: torch.zeros(layout.hidden, dtype=torch.float64) for n in modules}
    tokens = {n: 0 for n in modules}

    def hook(name: str):
        def run(mod: nn.Module, args: tuple, out: Tensor) -> None:
            x, y = args[0].detach().double(), out.detach().double()
            out_abs[name] += y.abs().reshape(-1, y.shape[-1]).sum(0).cpu()
            in_sq[name] += x.square().reshape(-1, x.shape[-1]).sum(0).cpu()
            tokens[name] += y.numel() // y.shape[-1]
        return run

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in token_batches(calibration):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not all(tokens.values()):
        missed = [n for n, t in tokens.items() if not t]
        raise ValueError(f"calibration never reached {missed[0]}; cannot rank the residual channels by activation")
    score = sum((out_abs[n] / tokens[n] for n in modules), torch.zeros(layout.hidden, dtype=torch.float64))
    return score, {n: in_sq[n] / tokens[n] for n in modules}


def magnitude_scores(model: nn.Module, layout: WidthLayout) -> Tensor:
    """Σ of the squared weights on each residual channel (embedding, norms, projections, untied head)."""
    score = torch.zeros(layout.hidden, dtype=torch.float64)
    for name, role in layout.roles.items():
        if role not in _DIM or (role == HEAD and layout.tied):
            continue
        p = model.get_parameter(name).detach().double()
        if role == NORM and layout.gemma:
            p = 1 + p
        score += p.square() if p.dim() == 1 else p.square().sum(1 - _DIM[role])
    return score


def hidden_scores(model: nn.Module, importance: str = "activation", calibration: Any = None) -> Tensor:
    """One score per residual channel (higher = more important); see the module docstring."""
    layout = width_layout(model)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "magnitude":
        return magnitude_scores(model, layout)
    if calibration is None:
        raise ValueError("importance='activation' ranks channels on data: pass calibration= token ids")
    return norm_statistics(model, layout, calibration)[0]


def plan_hidden(model: nn.Module, hidden_size: int) -> WidthLayout:
    """Every check of :func:`prune_hidden_` (layout, size, the config class's own validation); changes nothing."""
    layout = width_layout(model)
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or not 1 <= hidden_size <= layout.hidden:
        raise ValueError(f"hidden_size must be an int in [1, {layout.hidden}] (the current width), got {hidden_size!r}")
    why = config_change(model.config, **_config_fields(model.config, hidden_size))
    if why:
        raise ValueError(f"hidden_size {hidden_size} gives a config {type(model.config).__name__} refuses "
                         f"({why}); from_pretrained could not reload it: choose another width")
    return layout


def _config_fields(config: Any, hidden_size: int) -> dict[str, Any]:
    return {"hidden_size": hidden_size, "head_dim": head_dim_of(config)}


def _cut(p: nn.Parameter, dim: int, keep: Tensor) -> nn.Parameter:
    return nn.Parameter(p.detach().index_select(dim, keep.to(p.device)).clone(), requires_grad=p.requires_grad)


def _set_param(model: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, value)


def _fix_sizes(model: nn.Module, before: int, after: int) -> None:
    """Update the size attributes modules keep beside their tensors."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = m.weight.shape[1]
        if getattr(m, "hidden_size", None) == before and not isinstance(m.hidden_size, bool):
            m.hidden_size = after


@torch.no_grad()
def prune_hidden_(model: nn.Module, hidden_size: int | None = None, *, sparsity: float | None = None,
                  importance: str = "activation", calibration: Any = None, rescale_norms: bool = True,
                  keep: Iterable[int] | None = None) -> HiddenPruneReport:
    """Cut the residual / embedding width of a Hugging Face decoder to ``hidden_size`` channels (or remove
    ``sparsity`` of them), in place, keeping the best by ``importance`` (``activation``: Minitron's, needs
    ``calibration`` token ids; ``magnitude``); ``keep`` names the channels instead. Every norm, projection,
    the embedding and the (tied or untied) LM head are cut alike and the config follows, so the model
    saves and reloads with ``from_pretrained``. With ``rescale_norms`` (and calibration) the norm gains are
    corrected for the RMS of the removed channels. Refused, before any change, for a family or layout it
    cannot cut (see :func:`prunekit.shrink.layout.width_layout`)."""
    layout = width_layout(model)
    if (hidden_size is None) == (sparsity is None) and keep is None:
        raise ValueError("pass hidden_size= (the width kept) or sparsity= (the fraction of channels removed)")
    if sparsity is not None:
        if not 0 <= float(sparsity) < 1:
            raise ValueError(f"sparsity must be in [0, 1), the fraction of residual channels removed; got {sparsity}")
        hidden_size = layout.hidden - math.floor(layout.hidden * float(sparsity) + 1e-9)
    kept_given = None
    if keep is not None:
        kept_given = torch.tensor(sorted(set(int(i) for i in keep)), dtype=torch.long)
        if kept_given.numel() == 0 or int(kept_given.min()) < 0 or int(kept_given.max()) >= layout.hidden:
            raise ValueError(f"keep must name channels in [0, {layout.hidden}), at least one")
        if hidden_size is not None and hidden_size != kept_given.numel():
            raise ValueError(f"keep names {kept_given.numel()} channels but hidden_size is {hidden_size}")
        hidden_size = kept_given.numel()
    assert hidden_size is not None
    plan_hidden(model, hidden_size)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "activation" and calibration is None and kept_given is None:
        raise ValueError("importance='activation' ranks channels on data: pass calibration= token ids "
                         "(or importance='magnitude')")
    before = param_count(model)
    H = layout.hidden
    if hidden_size == H:
        return HiddenPruneReport(H, H, importance, before, before, False, ["nothing removed: the width is unchanged"])
    scores, mean_sq = None, None
    if calibration is not None and (importance == "activation" or rescale_norms):
        scores, mean_sq = norm_statistics(model, layout, calibration)
    if kept_given is not None:
        kept = kept_given
    else:
        if importance == "magnitude":
            scores = magnitude_scores(model, layout)
        assert scores is not None
        kept = torch.sort(torch.argsort(scores, descending=True, stable=True)[:hidden_size]).values
    notes: list[str] = []
    tied = is_tied(model)
    for name, role in layout.roles.items():
        if role not in _DIM or (role == HEAD and tied):
            continue
        p = model.get_parameter(name)
        dim = _DIM[role] if p.dim() > 1 else 0
        _set_param(model, name, _cut(p, dim, kept))
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    rescaled = bool(rescale_norms and mean_sq is not None)
    if rescaled:
        assert mean_sq is not None
        for n in layout.norms:
            ratio = math.sqrt(float(mean_sq[n][kept].mean()) / max(float(mean_sq[n].mean()), 1e-30))
            _scale_norm_(model.get_submodule(n), ratio, layout.gemma)
    if layout.gemma:
        notes.append(_gemma_scale_(model, H, hidden_size, tied, layout))
    _fix_sizes(model, H, hidden_size)
    for k, v in _config_fields(model.config, hidden_size).items():
        setattr(model.config, k, v)
    return HiddenPruneReport(H, hidden_size, importance if kept_given is None else "given", before,
                             param_count(model), rescaled, notes)


def _scale_norm_(norm: nn.Module, factor: float, gemma: bool) -> None:
    """Multiply an RMS norm's effective gain by ``factor`` (Gemma's norms scale by 1 + weight)."""
    w = norm.weight
    if gemma:
        w.copy_((1 + w.double()) * factor - 1)
    else:
        w.mul_(factor)


def _gemma_scale_(model: nn.Module, before: int, after: int, tied: bool, layout: WidthLayout) -> str:
    """Gemma multiplies embeddings by √hidden_size: set the new scale and rescale the embedding (and, tied,
    the final norm's gain) so that the kept channels carry the values they had."""
    emb = model.get_input_embeddings()
    c = math.sqrt(before / after)
    emb.weight.mul_(c)
    if hasattr(emb, "embed_scale"):
        emb.embed_scale.fill_(after ** 0.5)
    if hasattr(emb, "scalar_embed_scale"):
        emb.scalar_embed_scale = after ** 0.5
    if tied:
        _scale_norm_(model.get_submodule("model.norm"), 1 / c, layout.gemma)
    return f"Gemma embedding scale √{before} → √{after} compensated in the embedding" + \
        (" and the final norm (tied head)" if tied else "")
