"""Refit the kept weights of a pruned layer exactly on their support, by conjugate gradients.

With the mask fixed, min ‖(W₀ − W)X‖² over the weights W supported on the mask is a least-squares problem, one
per output row: H_SS w_S = (H W₀ᵀ)_S with H = X·Xᵀ. Greedy one-shot methods stop short of it (SparseGPT decides
each column on the updates of the columns before it and never revisits them); a few conjugate-gradient steps
from their weights close most of the gap. ALPS ends with the same step (Meng et al., 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cg_refit(h: Tensor, target: Tensor, x: Tensor, support: Tensor, iters: int) -> Tensor:
    """Conjugate gradients on min tr(XᵀHX)/2 − tr(Xᵀtarget) over X supported on ``support``, every column of X
    its own system; ``h`` (in × in) should have a unit diagonal (so no further preconditioning), X and ``target``
    are (in, out). Returns the new X (zero off the support where the start ``x`` is)."""
    s = support.float()
    r = (target - h @ x) * s
    p = r.clone()
    rr = (r * r).sum(0)
    for _ in range(iters):
        hp = h @ p
        denom = (p * hp).sum(0)
        alpha = rr / denom.where(denom != 0, torch.ones_like(denom))
        x = x + alpha * p
        r = (r - alpha * hp) * s
        rr_new = (r * r).sum(0)
        if float(rr_new.max()) <= 1e-12 * float(rr.max().clamp_min(1e-30)):
            break
        p = r + (rr_new / rr.where(rr != 0, torch.ones_like(rr))) * p
        rr = rr_new
    return x


REFIT_CHUNK_BYTES = 64 << 20  # rows refit at once: each of the step's five (rows × in) float32 buffers at most this


def _dot_rows(a: Tensor, b: Tensor) -> Tensor:
    return torch.einsum("ij,ij->i", a, b)


def refit_rows(w0: Tensor, w: Tensor, keep: Tensor, h: Tensor, iters: int, percdamp: float = 0.0) -> Tensor:
    """The (out, in) weight ``w`` (pruned to ``keep``) moved towards the least-squares fit of the dense ``w0`` on
    its support, by ``iters`` steps of conjugate gradients on H = ``h`` + ``percdamp`` × its mean diagonal (in × in,
    the inputs' X·Xᵀ; dead inputs, never active, count 1 in that mean and on the diagonal as in SparseGPT's
    dampening, and their weights in ``w0`` are ignored), preconditioned by H's diagonal (the same iterates as
    plain CG on the inputs normalised to unit energy). Each row is its own system; the rows step together (in
    pieces of :data:`REFIT_CHUNK_BYTES` per buffer), one (rows × in)·(in × in) product per step. ``h`` is not
    changed and no in × in matrix is made."""
    if iters <= 0:
        return w
    rows = max(1, REFIT_CHUNK_BYTES // (4 * max(1, w.shape[1])))
    if w.shape[0] > rows:  # rows are independent systems: in pieces, the buffers stay bounded on big layers
        return torch.cat([refit_rows(w0[i:i + rows], w[i:i + rows], keep[i:i + rows], h, iters, percdamp)
                          for i in range(0, w.shape[0], rows)])
    diag = torch.diagonal(h).float()
    dead = diag == 0
    damp = percdamp * float(diag.masked_fill(dead, 1.0).mean())
    m = (diag + damp).masked_fill(dead, 1.0 + damp)  # the dampened diagonal: the preconditioner
    has_dead = bool(dead.any())
    h = h.float()
    s = keep.float()
    x = w.float() * s
    # W₀ (its dead inputs' weights ignored) − W; the masked copy only when an input is dead (masked_fill's bool
    # path costs ~10× a subtraction on CPU)
    diff = w0.float().masked_fill(dead.reshape(1, -1), 0.0).sub_(x) if has_dead else torch.sub(w0.float(), x)

    def times_h(v: Tensor, out: Tensor) -> Tensor:  # out = v·(H + damp·I), dead inputs' diagonal 1 + damp
        torch.mm(v, h, out=out)
        if has_dead:
            out[:, dead] += v[:, dead]
        return out.add_(v, alpha=damp)

    r = times_h(diff, torch.empty_like(x)).mul_(s)  # minus the gradient, on the support
    z = r / m
    p = z.clone()
    rz = _dot_rows(r, z)
    hp = diff  # a buffer from here on
    for step in range(iters):
        times_h(p, hp)
        denom = _dot_rows(p, hp)
        alpha = (rz / denom.where(denom != 0, torch.ones_like(denom))).reshape(-1, 1)
        x.addcmul_(p, alpha)
        if step == iters - 1:  # the residual and direction of a step that will not be taken: not computed
            break
        r.sub_(hp.mul_(alpha)).mul_(s)
        torch.div(r, m, out=z)
        rz_new = _dot_rows(r, z)
        p.mul_((rz_new / rz.where(rz != 0, torch.ones_like(rz))).reshape(-1, 1)).add_(z)
        rz = rz_new
    return x
