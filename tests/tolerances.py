"""Float tolerances for tests, written once: they follow from the dtype and the length of the reduction.

Two results of the same K-term sum taken in different orders (another BLAS blocking, another kernel,
another thread count, a block-by-block loop against one big matmul) each differ from the exact sum by
at most about K·u·Σ|terms| (u = eps/2, the unit roundoff; Higham, *Accuracy and Stability of Numerical
Algorithms*, §4.2), so from each other by at most K·eps·Σ|terms|. ``tol(dtype, k)`` gives that worst
case as ``rtol`` and, for results that cancel toward zero, as ``atol`` at the size ``scale`` of
Σ|terms|. It holds on any machine, and stays far below what a real bug moves (a wrong index, a
missing term, a wrong scale change a result by a whole term, not by K·eps of it).

For a chain of reductions (a model forward: L layers of K-term sums) the errors add: pass ``k = L·K``
or the sum of the chain's reduction lengths. Exact equality is right only where the two sides do the
same arithmetic in the same order (copies, masks, integer work); say so where it is not obvious.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def eps(dtype: Any) -> float:
    """Machine epsilon of a torch or NumPy float dtype (float32: 1.19e-7, float16: 9.8e-4, bfloat16: 7.8e-3)."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps
    return float(np.finfo(dtype).eps)


def tol(dtype: Any, k: int = 1, *, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for two results of ``k``-term sums in ``dtype`` taken in different orders:
    K·eps (the worst case, see the module docstring); ``atol`` is that at ``scale`` = Σ|terms|."""
    bound = eps(dtype) * max(int(k), 1)
    return {"rtol": bound, "atol": bound * scale}


def assert_same_selection(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor, **close: float) -> None:
    """Two keep-masks chosen from ``scores`` (the same count kept in each row) agree up to near-ties:
    computed in another order, two scores within rounding of each other may swap places, so the masks
    may differ there, but each row keeps the same scores (to ``close``, e.g. ``tol(dtype, k)``).
    A wrong choice keeps a visibly different score and fails."""
    assert got.shape == want.shape == scores.shape
    assert torch.equal(got.sum(-1), want.sum(-1)), "a row keeps another number of entries"
    inf = torch.tensor(float("inf"), dtype=scores.dtype)
    torch.testing.assert_close(torch.where(got, scores, inf).sort(-1).values,
                               torch.where(want, scores, inf).sort(-1).values, **close)


def rows_that_agree(got: torch.Tensor, want: torch.Tensor, swaps: int = 1) -> torch.Tensor:
    """For two masks chosen from scores computed in different orders (another batching, another stats
    engine, another blocking): they keep the same number of entries and differ by at most ``swaps``
    swaps at near-ties (each changes two entries; a wrong choice changes many). Returns the rows where
    they agree, to compare what each row computed after its mask (rows are independent in SparseGPT and Wanda)."""
    diff = (got != want).reshape(got.shape[0], -1)
    assert int(got.sum()) == int(want.sum()), "the masks keep different numbers of entries"
    assert int(diff.sum()) <= 2 * swaps, f"{int(diff.sum())} entries differ: more than {swaps} swap(s) at a near-tie"
    return ~diff.any(-1)
