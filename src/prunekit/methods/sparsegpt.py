"""SparseGPT: one-shot pruning with second-order weight reconstruction (Frantar & Alistarh, 2023,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

For each layer, with H = X·Xᵀ over the calibration tokens (dampened by ``percdamp`` × mean diag), the
columns are visited left to right in blocks of ``blocksize``: the mask of each block is chosen
adaptively by w²/[H⁻¹]²_jj (per 128 columns for unstructured sparsity, per M-group for N:M), each
pruned weight's error is spread over the not-yet-visited columns of its row (OBS updates, lazily
batched: the paper per block, here per strip of 32 columns, the same sums). Calibration runs block by block
with pruned outputs feeding the next block. H⁻¹'s factor comes from one factorisation of H reversed and a
triangular inverse (:func:`inverse_hessian_factor`).
Then (``refit_iters``, 2 by default) the kept weights are refit on their support by conjugate gradients
(:mod:`.refit`): the column loop never revisits a column, so its weights stop short of the least-squares fit
that the mask allows.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..calibrate import InputStats
from ..core.finite import check_finite
from ..core.pattern import Pattern, mask_from_scores, parse_pattern
from .base import PruneLog, PrunePlan, register_method
from .config import BlockwiseConfig
from .layerwise import BlockwiseMethod, Budget
from .refit import refit_rows


class SparseGPTConfig(BlockwiseConfig):
    """SparseGPT (Frantar & Alistarh, 2023): OBS reconstruction with lazy blocks."""

    method: Literal["sparsegpt"] = "sparsegpt"
    blocksize: int = Field(128, ge=1)  # columns whose unstructured mask is chosen together (the paper's block)
    percdamp: float = Field(0.01, gt=0, lt=1)
    # "layer" (default): each layer on the inputs its pruned predecessors give it, in one pass per block (the
    # block called per batch_size windows, the calls in lockstep) where the activations of all windows fit
    # one_pass_max_gb (else in staged passes; calibrate/onepass.py);
    # "block": every layer of a block calibrated on the dense block (two passes per block; the paper's order)
    sequential: Literal["block", "layer"] = "layer"
    one_pass_max_gb: float | None = Field(None, gt=0)  # None: half of the memory available where blocks run
    # "natural": columns left to right (the paper, llm-compressor); "energy": in decreasing order of their input
    # energy diag(H) (GPTQ's act-order), the result put back in the natural order. Unstructured only (N:M groups are
    # positional). Measured worse on SmolLM2 held-out text (+5.0 %, +6.6 % perplexity, README issue 26 round 5):
    # kept for comparisons, not the default.
    column_order: Literal["natural", "energy"] = "natural"
    # conjugate-gradient steps that refit the kept weights on their support after the column loop (least squares
    # on the dampened H, :mod:`.refit`); 0: the paper's weights. 2 by default: on SmolLM2's held-out text it cut
    # perplexity by 3.6-4.9 % for 5-12 % more CPU time (README, issue 26 round 7)
    refit_iters: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _order_needs_unstructured(self) -> "SparseGPTConfig":
        if self.column_order != "natural" and parse_pattern(self.pattern).kind == "nm":
            raise ValueError(f"column_order={self.column_order!r} reorders the columns, which an N:M pattern "
                             f"({self.pattern}) groups by position; use column_order='natural' with N:M")
        return self


def dampen_(h: Tensor, percdamp: float) -> Tensor:
    """Give H's dead input columns (never active) a unit diagonal and add ``percdamp`` × its mean diagonal, in
    place; returns the mask of those dead columns."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    return dead


def dampened_hessian(h: Tensor, percdamp: float) -> tuple[Tensor, Tensor]:
    """H in float32 with its dead input columns (never active) given a unit diagonal and ``percdamp`` × its mean
    diagonal added; and the mask of those dead columns."""
    h = h.clone().float()
    return h, dampen_(h, percdamp)


TRIANGULAR_BASE = 128  # below this size a triangular inverse is one triangular solve


def upper_triangular_inverse_(r: Tensor) -> Tensor:
    """R⁻¹ written over the upper triangular ``r`` (its lower triangle zero); returns ``r``. By halves,
    [A B; 0 C]⁻¹ = [A⁻¹ −A⁻¹·B·C⁻¹; 0 C⁻¹]: two matrix products per level (torch exposes no triangular inverse,
    and a triangular solve against the identity does three times the work)."""
    n = r.shape[0]
    if n <= TRIANGULAR_BASE:
        eye = torch.eye(n, dtype=r.dtype, device=r.device)
        return r.copy_(torch.linalg.solve_triangular(r, eye, upper=True).triu_())
    k = n // 2
    a, b, c = r[:k, :k], r[:k, k:], r[k:, k:]
    upper_triangular_inverse_(a)
    upper_triangular_inverse_(c)
    ab = a @ b
    b.addmm_(ab, c, beta=0, alpha=-1)
    return r


def inverse_hessian_factor(h: Tensor, percdamp: float) -> tuple[Tensor, Tensor]:
    """Upper Cholesky factor U of the dampened H⁻¹ (H⁻¹ = UᵀU, the paper's ``chol(inv(H))ᵀ``), and the mask of
    dead input columns (never active); ``h`` is not changed.

    From one factorisation, of H reversed: J·H·J = L·Lᵀ (J the reversal) makes H = R·Rᵀ with R = J·L·J upper
    triangular, so H⁻¹ = R⁻ᵀ·R⁻¹ and U = R⁻¹, a triangular inverse (:func:`upper_triangular_inverse_`). The
    paper's route (factorise H, invert it, factorise the inverse) costs about twice the CPU. Both are float32
    (as the paper's code) and as accurate as an inverse (UᵀU·H − I); the entries of U's first rows can carry a
    few more rounding digits here when their columns are strongly correlated (they are the reversed
    factorisation's last pivots). On SmolLM2's layers the pruned weights' output errors agree to 5 digits and
    the masks are the same (README, issue 26 round 10)."""
    rev = h.flip(0, 1).float()  # a fresh matrix: J·H·J
    dead = dampen_(rev, percdamp).flip(0)
    torch.linalg.cholesky(rev, out=rev)
    u = rev.flip(0, 1)  # R
    del rev
    return upper_triangular_inverse_(u), dead


_UNSTRUCTURED = Pattern("unstructured")
UPDATE_STRIP = 32  # columns whose OBS steps run between two lazy updates (the mask is still chosen per block)


def choose_in_group_(mask_t: Tensor, w_t: Tensor, d: Tensor, keep_t: Tensor | None, count: int) -> None:
    """Mark pruned (True in ``mask_t``) the ``count`` entries of every row of one N:M group with the lowest
    w²/[H⁻¹]²_jj; entries no longer alive (``keep_t`` False) first. The group is M columns of the weight, as M
    rows of its transpose (``w_t``, ``mask_t``, ``keep_t``: M × rows; ``d``: M × 1)."""
    group = w_t.square() / d.square()
    if keep_t is not None:
        group = group.masked_fill(~keep_t, -1.0)
    mask_t.scatter_(0, torch.argsort(group, dim=0, stable=True)[:count], True)


def sparsegpt_prune(w: Tensor, hinv: Tensor, dead: Tensor, sparsity: float, n: int = 0, m: int = 0,
                    blocksize: int = 128, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Prune an (out, in) weight with OBS reconstruction; returns (new weight, keep-mask).

    ``n``:``m`` > 0 asks for N:M (keep ``n`` of every ``m`` inputs); else ``sparsity`` of each block of
    ``blocksize`` columns is pruned. ``keep`` (optional) marks entries that are still alive: the others
    are pruned first. This is the paper's column loop, run on the transposed weight (made once) so that each
    column is a contiguous row, each block a contiguous slab and each step two vector operations on views taken
    once per strip: the column steps are the paper's operations; its lazy block update is made per strip of
    :data:`UPDATE_STRIP` columns, taken transposed (the same sums, grouped otherwise: equal up to float32 rounding).
    """
    wt = w.float().t().contiguous()  # (in, out): column j of the weight is row j here
    if bool(dead.any()):  # (a boolean index costs a scan even when it selects nothing)
        wt[dead] = 0
    cols, rows = wt.shape
    pruned_t = torch.zeros_like(wt, dtype=torch.bool)
    keep_t = None if keep is None else keep.t()
    prune_per_group = m - n if m else 0
    err_buf = wt.new_empty(min(blocksize, cols), rows)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1t = wt[i1:i2]  # the block's columns, as rows: updated in place
        err1t = err_buf[:count]
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1).reshape(-1, 1)
        keep1t = None if keep_t is None else keep_t[i1:i2]
        mask1t = pruned_t[i1:i2]  # True = pruned; written in place
        if m:
            div_t = w1t.new_full(w1t.shape, float("inf"))  # d / pruned: inf where kept (e = w / inf = 0)
        else:
            score = w1t.t().square() / d.reshape(1, -1).square()  # ranked in (out, in) order, as the paper
            if keep1t is not None:
                score = score.masked_fill(~keep1t.t(), -1.0)
            k = int(round(score.numel() * sparsity))
            mask1t.copy_(~mask_from_scores(score, _UNSTRUCTURED, k).t())
            div_t = d / mask1t.float()  # e = w·p / d = w / (d / p): the same number, one operation
        # the column steps in strips of UPDATE_STRIP columns, each strip's updates to the columns after it one
        # product (the paper's lazy update, at a finer grain: the same sums, the in-strip tails short enough to
        # stay in cache); the rows of the strip's tensors and their tails are views taken once per strip
        # (indexing them per column costs more than the column's arithmetic on this size)
        strip = UPDATE_STRIP if not m or UPDATE_STRIP % m == 0 else count
        for j1 in range(0, count, strip):
            j2 = min(j1 + strip, count)
            ws, es = w1t[j1:j2], err1t[j1:j2]
            w_rows, v_rows, e_rows = ws.unbind(0), div_t[j1:j2].unbind(0), es.unbind(0)
            w_tails = [ws[i:] for i in range(j2 - j1)]
            h_tails = [h[j1 + i:j2] for i, h in enumerate(hinv1[j1:j2].unbind(0))]
            for i in range(j2 - j1):
                c = j1 + i
                if m and c % m == 0:
                    choose_in_group_(mask1t[c:c + m], w1t[c:c + m], d[c:c + m],
                                     None if keep1t is None else keep1t[c:c + m], prune_per_group)
                    torch.div(d[c:c + m], mask1t[c:c + m].float(), out=div_t[c:c + m])
                # e = (w − q) / [H⁻¹]_ii, q = w with the pruned entries zeroed
                torch.div(w_rows[i], v_rows[i], out=e_rows[i])
                w_tails[i].addr_(h_tails[i], e_rows[i], alpha=-1)
            # the pruned entries to exactly +0 (w·0 = ±0, and ±0 + 0 = +0): masked_fill_'s bool path costs 30× more
            ws.mul_(mask1t[j1:j2].logical_not().float()).add_(0.0)
            wt[i1 + j2:].addmm_(hinv[i1 + j1:i1 + j2, i1 + j2:].t(), es, alpha=-1)
    return wt.t().contiguous(), ~pruned_t.t().contiguous()


@register_method("sparsegpt", SparseGPTConfig)
class SparseGPT(BlockwiseMethod):
    """SparseGPT (Frantar & Alistarh, 2023): OBS reconstruction with lazy block updates, calibrated block by block."""

    name = "sparsegpt"
    hessian = True
    updates_weights = True
    patterns = ("unstructured", "nm")

    def apply_(self, model: nn.Module, plan: PrunePlan, sparsity: float, log: PruneLog) -> None:
        """Prune block by block; with ``sequential="layer"`` each layer on its pruned predecessors' outputs, in
        one forward per block where memory allows (see :meth:`BlockwiseMethod.sequential_`)."""
        return self.sequential_(model, plan, sparsity, log)

    def begin_block(self) -> None:
        """Forget the previous block's inverse Hessians."""
        self._factors: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}

    def collect(self, block: nn.Module, targets, inputs, device, hessian: bool | None = None) -> InputStats:
        self.begin_block()
        return super().collect(block, targets, inputs, device, hessian)

    def prune_matrix(self, key: str, w: Tensor, keep_old: Tensor | None, stats: InputStats, budget: Budget,
                     plan: PrunePlan) -> tuple[Tensor, Tensor]:
        """Reconstruct the weight with the mask SparseGPT picks; layers sharing an input share H⁻¹. A matrix
        that saw no calibration token (an expert the router never chose) uses H = I: magnitude pruning."""
        owner = stats.owner.get(key, key)
        if owner not in self._factors:
            h = stats.gram(key) if stats.seen(key) else torch.eye(w.shape[1], device=w.device)
            check_finite(h, "sparsegpt's Hessian X·Xᵀ", key,
                         "the layer's inputs overflow or hold NaN (an earlier layer's outputs are not finite)")
            percdamp = plan.config.percdamp
            order = None
            if plan.config.column_order == "energy":
                order = torch.argsort(torch.diag(h), descending=True, stable=True)
                h = h[order][:, order]
            try:
                self._factors[owner] = (*inverse_hessian_factor(h, percdamp), order)
            except torch.linalg.LinAlgError:
                raise ValueError(f"sparsegpt: the Hessian of layer {key!r} is not positive definite even with "
                                 f"percdamp={percdamp}; raise percdamp (e.g. 0.1) or give more calibration "
                                 "windows") from None
        hinv, dead, order = self._factors[owner]
        w = w.to(hinv.device)
        keep_old = None if keep_old is None else keep_old.to(w.device)
        n, m = (plan.pattern.n, plan.pattern.m) if plan.pattern.kind == "nm" else (0, 0)
        if order is None:
            new_w, keep = sparsegpt_prune(w, hinv, dead, budget.sparsity, n, m, plan.config.blocksize, keep_old)
        else:  # columns visited in ``order``; the results put back where they belong
            new_p, keep_p = sparsegpt_prune(w[:, order], hinv, dead, budget.sparsity, n, m, plan.config.blocksize,
                                            None if keep_old is None else keep_old[:, order])
            new_w, keep = torch.empty_like(new_p), torch.empty_like(keep_p)
            new_w[:, order], keep[:, order] = new_p, keep_p
        if keep_old is not None:
            keep &= keep_old
            new_w = new_w * keep
        if plan.config.refit_iters and stats.seen(key):  # H = I (no token seen): the weights are already optimal
            new_w = refit_rows(w, new_w, keep, stats.gram(key), plan.config.refit_iters, plan.config.percdamp)
        return keep, new_w

