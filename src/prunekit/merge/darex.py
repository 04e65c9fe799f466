"""DAREx-q's rescaling factor searched on calibration text (Deng et al., 2024, "DARE the Extreme").

DARE keeps each delta entry with probability ``density`` and multiplies the survivors by ``1/density``. At
high drop rates that factor is large (×100 at density 0.01) and the pruned delta can overshoot; DAREx-q
multiplies by ``1/q`` instead, q chosen by a search: on labelled validation data (the paper's ``1/q_v``) or by
how little the model's outputs on unlabelled data change (``1/q_e``).

``q="search"`` is ``1/q_e``: for each fine-tune, the q (one for the whole model) whose pruned delta, put back on
the base, changes the fine-tune's last hidden states (the language-model head's input) least on the calibration
windows, in mean squared error. The candidates are :data:`GRID` q's spaced evenly in log between ``density/2``
and 1 (DARE's q = density is one of them, so the search is never worse than DARE on the calibration text), then
:data:`REFINE` more between the best one's neighbours.

The fine-tune is loaded once and its hidden states kept; its merged tensors are then set to the base's and
their survivors ``D̃``, drawn with the merge's own per-tensor generators (:func:`survivors`, so the mask searched
is the mask written), are held to move every tensor from one candidate to the next (``+ D̃·(1/q' − 1/q)``).
Memory: the model, its survivors (at most its size; tensors the fine-tune left unchanged hold none) and the
reference hidden states.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .tensors import row_groups, sparsify_delta

if TYPE_CHECKING:
    from .config import DareConfig
    from .sources import TensorFolder

GRID = 8  # log-spaced candidates of q in [density/2, 1]
REFINE = 4  # more candidates between the best candidate's neighbours


def survivors(name: str, base: "TensorFolder", model: "TensorFolder", config: "DareConfig",
              model_index: int) -> Tensor:
    """Tensor ``name``'s unscaled DARE survivors ``D̃`` (the delta where kept, 0 elsewhere), drawn row group by
    row group with the keys and generators the merge uses."""
    groups = row_groups(base.infos[name].shape)
    kept = []
    for r0, r1 in groups:
        key = name if len(groups) == 1 else f"{name}@{r0}"
        d = model.get(name, r0, r1).float() - base.get(name, r0, r1).float()
        kept.append(sparsify_delta(d, config, model_index, key, rescale=None))
    return kept[0] if len(groups) == 1 else torch.cat(kept)


def candidates(density: float, low: float | None = None, high: float = 1.0, n: int = GRID) -> list[float]:
    """``n`` values of q spaced evenly in log between ``low`` (default ``density/2``) and ``high``, and
    ``density`` itself when it is inside (DARE's q)."""
    low = density / 2 if low is None else low
    qs = [math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / (n - 1)) for i in range(n)]
    if low < density < high:
        qs.append(density)
    return sorted(set(qs))


class _Model:
    """The fine-tune loaded once; after :meth:`to_base_`, its merged tensors are ``base + D̃/q`` for the q of the
    last :meth:`set_q_`."""

    def __init__(self, base: "TensorFolder", model: "TensorFolder", config: "DareConfig", model_index: int,
                 names: list[str]) -> None:
        from transformers import AutoModelForCausalLM

        try:
            self.lm = AutoModelForCausalLM.from_pretrained(str(model.folder), dtype=torch.float32).eval()
        except Exception as err:  # noqa: BLE001 - any load failure means the same thing to the user
            raise ValueError(f"q='search' runs {model.label} on calibration text, but transformers cannot load it "
                             f"as a causal LM ({type(err).__name__}: {err}); give a number for q instead") from err
        params = dict(self.lm.named_parameters(remove_duplicate=False))
        self.names = [n for n in names if n in params]
        if not self.names:
            raise ValueError(f"q='search': none of {model.label}'s parameters is a merged tensor (its parameter "
                             "names do not match the safetensors' tensor names, or --skip leaves them all out); "
                             "give a number for q instead")
        self.params = params
        self.base, self.model, self.config, self.index = base, model, config, model_index
        self.kept: dict[str, Tensor] = {}
        self.factor = 0.0

    def to_base_(self) -> None:
        """Set every merged parameter to the base's tensor and hold its survivors (none for an unchanged one)."""
        with torch.no_grad():
            for name in self.names:
                p = self.params[name]
                kept = survivors(name, self.base, self.model, self.config, self.index)
                if bool(kept.any()):
                    self.kept[name] = kept.reshape(p.shape).to(p.dtype)
                p.copy_(self.base.get(name).reshape(p.shape).to(p.dtype))
        self.factor = 0.0

    def hidden(self, windows: Tensor, batch_size: int) -> Tensor:
        """The last hidden states (the head's input) on ``windows``, float32, flattened to tokens × width."""
        out = []
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                res = self.lm(input_ids=windows[i:i + batch_size], output_hidden_states=True, use_cache=False)
                out.append(res.hidden_states[-1].reshape(-1, res.hidden_states[-1].shape[-1]).float())
        return torch.cat(out)

    def set_q_(self, q: float) -> None:
        """Every merged parameter becomes ``base + D̃/q`` (up to the rounding of the moves from earlier q's)."""
        with torch.no_grad():
            for name, kept in self.kept.items():
                self.params[name].add_(kept, alpha=1 / q - self.factor)
        self.factor = 1 / q


def search_q(base: "TensorFolder", model: "TensorFolder", config: "DareConfig", model_index: int, windows: Tensor,
             names: list[str], batch_size: int = 4) -> tuple[float, dict[str, Any]]:
    """DAREx-q's ``1/q_e`` for fine-tune ``model``: the q whose pruned delta changes its last hidden states on
    ``windows`` (token ids, ``(n, seqlen)``) least (see the module docstring). Returns q and a summary: the error
    at q, at DARE's ``q = density`` and with no rescale (``q = 1``), relative to the fine-tune's own hidden
    states' mean square, and every candidate tried."""
    m = _Model(base, model, config, model_index, names)
    reference = m.hidden(windows, batch_size)
    m.to_base_()
    scale = float(reference.pow(2).mean())
    tried: dict[float, float] = {}

    def error(q: float) -> float:
        if q not in tried:
            m.set_q_(q)
            tried[q] = float((m.hidden(windows, batch_size) - reference).pow(2).mean()) / scale
        return tried[q]

    grid = candidates(config.density)
    for q in grid:
        error(q)
    best = min(tried, key=tried.get)  # type: ignore[arg-type]
    i = grid.index(best)
    low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if high > low:
        for q in candidates(config.density, low, high, REFINE + 2)[1:-1]:
            error(q)
    best = min(tried, key=tried.get)  # type: ignore[arg-type]
    summary = {"model": model.label, "q": best, "factor": 1 / best, "dare_factor": 1 / config.density,
               "error": tried[best], "error_dare": error(config.density), "error_no_rescale": error(1.0),
               "tensors": len(m.names), "tried": {f"{q:.6g}": e for q, e in sorted(tried.items())}}
    return best, summary
