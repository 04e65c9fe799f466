"""Refit the kept weights of a pruned layer exactly on their support, by conjugate gradients.

With the mask fixed, min ‖(W₀ − W)X‖² over the weights W supported on the mask is a least-squares problem, one
per output row: H_SS w_S = (H W₀ᵀ)_S with H = X·Xᵀ. Greedy one-shot methods stop short of it (SparseGPT decides
each column on the updates of the columns before it and never revisits them); a few conjugate-gradient steps
from their weights close most of the gap. ALPS ends with the same step (Meng et al., 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cg_refit(h: Tensor, target: Tensor | None, x: Tensor, support: Tensor, iters: int,
             residual: Tensor | None = None) -> Tensor:
    """Conjugate gradients on min tr(XᵀHX)/2 − tr(Xᵀtarget) over X supported on ``support``, every column of X
    its own system; ``h`` (in × in) should have a unit diagonal (so no further preconditioning), X and ``target``
    are (in, out). ``residual`` (target − h·x, when the caller has it cheaper) replaces ``target``. Returns the
    new X (zero off the support where the start ``x`` is); ``x`` and ``residual`` are overwritten (the steps run
    in place: one product and no other matrix-sized allocation per step)."""
    s = support.float()
    r = (target - h @ x if residual is None else residual).mul_(s)
    p = r.clone()
    rr = torch.einsum("ij,ij->j", r, r)
    for _ in range(iters):
        hp = h @ p
        denom = torch.einsum("ij,ij->j", p, hp)
        alpha = rr / denom.where(denom != 0, torch.ones_like(denom))
        x.addcmul_(p, alpha)
        r.sub_(hp.mul_(alpha)).mul_(s)
        rr_new = torch.einsum("ij,ij->j", r, r)
        if float(rr_new.max()) <= 1e-12 * float(rr.max().clamp_min(1e-30)):
            break
        p.mul_(rr_new / rr.where(rr != 0, torch.ones_like(rr))).add_(r)
        rr = rr_new
    return x


def refit_rows(w0: Tensor, w: Tensor, keep: Tensor, h: Tensor, iters: int, percdamp: float = 0.0) -> Tensor:
    """The (out, in) weight ``w`` (pruned to ``keep``) moved towards the least-squares fit of the dense ``w0`` on
    its support, by ``iters`` conjugate-gradient steps on H = ``h`` + ``percdamp`` × its mean diagonal (in × in,
    the inputs' X·Xᵀ; dead inputs, never active, count 1 in that mean as in SparseGPT's dampening, and their
    weights in ``w0`` are ignored). Jacobi-scaled: the steps run on the inputs normalised to unit energy. ``h``
    is not changed; one in × in matrix is made."""
    if iters <= 0:
        return w
    diag = torch.diagonal(h).float()
    dead = diag == 0
    damp = percdamp * float(diag.masked_fill(dead, 1.0).mean())
    scale = (diag + damp).masked_fill(dead, 1.0 + damp).sqrt()
    inv = 1.0 / scale
    hn = torch.mul(h.float(), inv.reshape(-1, 1)).mul_(inv.reshape(1, -1))  # unit diagonal after the dampening
    hn.diagonal().fill_(1.0)
    support = keep.t()
    x = (w.float() * scale).t() * support
    # the starting residual H(W₀ − W)ᵀ in one product (not H·W₀ᵀ − H·Wᵀ in two)
    diff = (w0.float().masked_fill(dead.reshape(1, -1), 0.0) * scale).t().sub_(x)
    x = cg_refit(hn, None, x, support, iters, residual=hn @ diff)
    return (x.t() / scale) * keep
