"""``shrink_(model, target="params=0.6", calibration=ids)``: a smaller dense decoder of a uniform shape
chosen to meet a budget, cut along the axes asked for (heads, neurons, hidden width, depth).

Heads, neurons and blocks are removed through :mod:`prunekit.structured` (whole GQA groups, the same
count in every layer; Block Influence for depth); the residual width by :func:`.width.prune_hidden_`.
The shape is chosen by :mod:`.search`. Every check — family and layout, target, axes, calibration, a
reachable budget — runs before the model is touched.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .budget import Counter, Shape, Target, non_embedding_params, parse_target, shape_of
from .layout import config_change, width_layout
from .search import AXES, DEFAULT_CANDIDATES, DEFAULT_SLACK, DEFAULT_WIDTH_MULTIPLE, check_axes, \
    check_width_multiple, unaligned, candidates as search_candidates
from .width import IMPORTANCES, param_count, prune_hidden_, token_batches


@dataclass
class ScoredShape:
    """One candidate of the search: its shape, the share of the budgeted count it keeps, its calibration loss."""

    shape: Shape
    kept: float
    loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The candidate as plain data."""
        return {"shape": self.shape.to_dict(), "kept": self.kept, "loss": self.loss}


@dataclass
class ShrinkReport:
    """What :func:`shrink_` did: the budget, the shape chosen and the candidates it was chosen from."""

    target: str
    axes: list[str]
    importance: str
    shape_before: Shape
    shape_after: Shape
    non_embedding_before: int
    non_embedding_after: int
    params_before: int
    params_after: int
    candidates: list[ScoredShape]
    grid_size: int
    under_budget: int
    seconds: float
    steps: list[str] = field(default_factory=list)
    width_multiple: int = DEFAULT_WIDTH_MULTIPLE
    notes: list[str] = field(default_factory=list)

    @property
    def non_embedding_kept(self) -> float:
        """Share of the non-embedding parameters kept."""
        return self.non_embedding_after / self.non_embedding_before

    @property
    def params_kept(self) -> float:
        """Share of all parameters (embedding and head included, tied once) kept."""
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        d = asdict(self)
        d.update(shape_before=self.shape_before.to_dict(), shape_after=self.shape_after.to_dict(),
                 candidates=[c.to_dict() for c in self.candidates], non_embedding_kept=self.non_embedding_kept,
                 params_kept=self.params_kept)
        return d

    def __str__(self) -> str:
        scored = [c for c in self.candidates if c.loss is not None]
        search = (f"best of {len(scored)} scored candidates ({self.under_budget} of {self.grid_size} grid shapes under "
                  "the budget)" if scored else f"first of {len(self.candidates)} in the band, unscored")
        if self.shape_after == self.shape_before:
            search += f"; nothing cut: the dense shape already meets {self.target}"
        return (f"shrink to {self.target} along {', '.join(self.axes)}: {self.shape_before} → {self.shape_after} "
                f"({search}); non-embedding parameters {self.non_embedding_before:,} → {self.non_embedding_after:,} "
                f"({self.non_embedding_kept:.1%}), all parameters {self.params_before:,} → {self.params_after:,} "
                f"({self.params_kept:.1%}); {self.seconds:.0f} s"
                + (f"; widths in multiples of {self.width_multiple}" if self.width_multiple != DEFAULT_WIDTH_MULTIPLE
                   else "") + "".join(f"; note: {n}" for n in self.notes))


def _structured_importance(importance: str) -> str:
    return "activation" if importance == "activation" else "l2"


@torch.no_grad()
def apply_shape_(model: nn.Module, shape: Shape, calibration: Any, importance: str = "activation",
                 progress: bool = False) -> list[str]:
    """Cut ``model`` in place to ``shape`` (blocks, then heads, neurons, width); returns each step's report."""
    from ..structured import prune_heads_, prune_layers_, prune_neurons_

    now = shape_of(model)
    steps: list[str] = []
    imp = _structured_importance(importance)
    if shape.layers < now.layers:
        steps.append(str(prune_layers_(model, calibration, n=now.layers - shape.layers, progress=progress)))
    if (shape.heads, shape.kv_heads) != (now.heads, now.kv_heads):
        if now.kv_heads > 1:
            unit, units, keep = "group", now.kv_heads, shape.kv_heads
        else:
            unit, units, keep = "query", now.heads, shape.heads
        with warnings.catch_warnings():  # the intermediate config (old width, new heads) may not validate
            warnings.simplefilter("ignore")
            steps.append(str(prune_heads_(model, sparsity=(units - keep) / units, importance=imp, seed=0,
                                          calibration=calibration, unit=unit, reloadable=False)))
    if shape.ffn < now.ffn:
        with warnings.catch_warnings():  # the same: the final config is checked below
            warnings.simplefilter("ignore")
            steps.append(str(prune_neurons_(model, sparsity=(now.ffn - shape.ffn) / now.ffn, importance=imp, seed=0,
                                            calibration=calibration, reloadable=False)))
    if shape.hidden < now.hidden:
        steps.append(str(prune_hidden_(model, shape.hidden, importance=importance, calibration=calibration)))
    got = shape_of(model)
    if got != shape:
        raise RuntimeError(f"shrink reached {got}, not the planned {shape}; please report this")
    why = config_change(model.config)
    if why:
        raise RuntimeError(f"the shrunk model's config is refused by its class ({why}); please report this")
    return steps


@torch.no_grad()
def calibration_loss(model: nn.Module, calibration: Any) -> float:
    """Mean next-token cross-entropy over the calibration windows."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in token_batches(calibration):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


def check_calibration(model: nn.Module, calibration: Any) -> None:
    """Calibration token ids the model can read, or one clear ValueError."""
    if calibration is None:
        raise ValueError("shrink_ needs calibration token ids (importance, Block Influence and the search's scores "
                         "run on them), e.g. prunekit.datasets.text.calibration_windows(tokenizer)")
    batches = token_batches(calibration)
    vocab = int(model.config.vocab_size)
    if any(int(b.max()) >= vocab or int(b.min()) < 0 for b in batches):
        raise ValueError(f"calibration holds token ids outside the model's vocabulary of {vocab}")


def plan_shrink(model: nn.Module, target: str | Target, calibration: Any, axes: Iterable[str] = AXES,
                importance: str = "activation", slack: float = DEFAULT_SLACK,
                width_multiple: int = DEFAULT_WIDTH_MULTIPLE):
    """Every check of :func:`shrink_` and the candidate shapes, best-first; changes nothing."""
    width_layout(model)  # the family and its layout first
    check_width_multiple(width_multiple)
    t = parse_target(target)
    if t.kind == "speed":
        raise ValueError(f"target {t} is a measured latency, searched per layer: use prunekit.shrink.shrink_layers_ "
                         "(--search per-layer)")
    chosen_axes = check_axes(axes)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    check_calibration(model, calibration)
    if not 0 <= slack < 1:
        raise ValueError(f"slack must be in [0, 1), the share of the dense count below the budget still searched; "
                         f"got {slack}")
    counter = Counter.of(model)
    dense = shape_of(model)
    if config_change(model.config, head_dim=dense.head_dim) is not None:
        raise ValueError(f"{type(model.config).__name__} refuses an explicit head_dim; cannot shrink it")
    return t, chosen_axes, counter, dense, search_candidates(dense, counter, t, chosen_axes, model.config, slack,
                                                             width_multiple)


def shrink_(model: nn.Module, target: str | Target = "params=0.6", calibration: Any = None,
            axes: Iterable[str] = AXES, *, importance: str = "activation", candidates: int = DEFAULT_CANDIDATES,
            slack: float = DEFAULT_SLACK, progress: bool = False,
            width_multiple: int = DEFAULT_WIDTH_MULTIPLE) -> ShrinkReport:
    """Shrink a Hugging Face decoder in place to a uniform shape under ``target`` (``"params=0.6"``: at most
    60% of the non-embedding parameters; ``"memory=0.5"``: at most half the weight bytes), cutting along
    ``axes`` (``heads``, ``neurons``, ``hidden``, ``depth``). The shape is the best of ``candidates`` grid
    shapes near the budget by next-token loss on ``calibration`` (token ids); see :mod:`prunekit.shrink.search`.
    ``importance``: ``activation`` (Minitron's) or ``magnitude``. ``width_multiple``: cut widths are multiples of
    it (32, the default: llama.cpp's q8_0/q4_0 blocks where the dense size allows; 256 for K-quants, strict; see
    :mod:`prunekit.shrink.search`). Checked before anything changes: the family, the target (an unreachable one is
    an error), the axes and the calibration."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be a positive int (shapes scored on calibration), got {candidates!r}")
    start = time.perf_counter()
    t, chosen_axes, counter, dense, found = plan_shrink(model, target, calibration, axes, importance, slack,
                                                        width_multiple)
    scored = [ScoredShape(s, found.fraction(counter, s, t)) for s in found.shapes[:candidates]]
    if len(scored) > 1:
        for c in tqdm(scored, desc="shrink: scoring shapes", disable=not progress, leave=False):
            trial = copy.deepcopy(model)
            apply_shape_(trial, c.shape, calibration, importance)
            c.loss = calibration_loss(trial, calibration)
            del trial
        best = min(scored, key=lambda c: c.loss if c.loss is not None else math.inf)
    else:
        best = scored[0]
    ne_before, p_before = non_embedding_params(model), param_count(model)
    steps = apply_shape_(model, best.shape, calibration, importance, progress)
    return ShrinkReport(str(t), list(chosen_axes), importance, dense, best.shape, ne_before,
                        non_embedding_params(model), p_before, param_count(model), scored, found.grid_size,
                        found.under_budget, time.perf_counter() - start, steps, width_multiple,
                        unaligned(best.shape, width_multiple))
