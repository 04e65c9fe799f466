"""The shared tolerance helpers hold what two summation orders produce and catch a wrong result."""

import numpy as np
import pytest
import torch

from tests.tolerances import assert_same_selection, rows_that_agree, tol


def test_tol_is_k_eps_and_covers_two_orders_of_a_sum():
    assert tol(torch.float32, 16) == {"rtol": 16 * 2.0 ** -23, "atol": 16 * 2.0 ** -23}
    assert tol(np.float64, 1, scale=10)["atol"] == 10 * 2.0 ** -52
    x = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    forward, backward = x.sum(1), x.flip(1).cumsum(1)[:, -1]  # one order, and its reverse done one by one
    torch.testing.assert_close(forward, backward, **tol(torch.float32, 4096, scale=float(x.abs().sum(1).max())))
    with pytest.raises(AssertionError):  # one term left out is a real bug, far beyond the bound
        torch.testing.assert_close(forward, backward - x[:, 0], **tol(torch.float32, 4096, scale=1.0))


def test_selections_may_swap_near_ties_only():
    scores = torch.tensor([[1.0, 2.0, 2.0 + 1e-7, 5.0]])
    keep = torch.tensor([[False, True, False, True]])
    swapped = torch.tensor([[False, False, True, True]])  # a near-tie swapped: fine
    assert_same_selection(keep, swapped, scores, **tol(torch.float32, 4, scale=5))
    wrong = torch.tensor([[True, False, False, True]])
    with pytest.raises(AssertionError):
        assert_same_selection(keep, wrong, scores, **tol(torch.float32, 4, scale=5))
    assert rows_that_agree(keep, swapped).tolist() == [False]
    with pytest.raises(AssertionError, match="entries differ"):
        rows_that_agree(torch.tensor([[True, True, False, False]]), torch.tensor([[False, False, True, True]]))


def test_two_orders_of_unit_vector_similarities_break_the_old_rtol_and_hold_tol():
    # issue 20 item 1: test_semdedup compared two blockings at rtol=1e-6 and failed on another CPU. The same
    # 16-term float32 dot products summed one dimension at a time, from the last: near-zero similarities
    # differ far beyond 1e-6 relative, by less than 16·eps absolute (Σ|terms| ≤ 1 for unit vectors).
    x = np.random.default_rng(0).standard_normal((257, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    blas = x @ x.T
    by_dim = np.zeros_like(blas)
    for d in range(15, -1, -1):
        by_dim += np.outer(x[:, d], x[:, d])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(by_dim, blas, rtol=1e-6)
    np.testing.assert_allclose(by_dim, blas, **tol(np.float32, k=16))
