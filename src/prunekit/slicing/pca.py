"""The statistics SliceGPT needs: covariances of what the residual stream's norms see, and their PCA."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..calibrate.batches import calibration_batches


class _Stop(Exception):
    """Ends the model's forward once the final norm's input is known (the LM head is not needed)."""


def norm_input_covariances(model: nn.Module, norms: list[nn.Module], calibration: Any, *, batch_size: int = 8,
                           signal: str = "normalized", progress: bool = True) -> list[Tensor]:
    """One (hidden × hidden) float64 matrix Σ xᵀx per norm, over every calibration token.

    ``signal="normalized"`` sums the norms' outputs before their gains (x / rms(x), every token weighs
    the same); ``"residual"`` sums the raw stream (x), as SliceGPT's code does. The forward stops at
    the last norm in ``norms``, so the LM head is never computed.
    """
    from tqdm.auto import tqdm

    covs: list[Tensor | None] = [None] * len(norms)
    last = len(norms) - 1

    def hook_for(i: int, norm: nn.Module):
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if signal == "normalized":
                x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
            c = (x.t() @ x).double()
            covs[i] = c if covs[i] is None else covs[i] + c
            if i == last:
                raise _Stop
        return hook

    handles = [n.register_forward_pre_hook(hook_for(i, n)) for i, n in enumerate(norms)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = calibration_batches(calibration, batch_size, tokens=True)
            for batch in tqdm(batches, desc="slicegpt: covariances", disable=not progress, leave=False):
                try:
                    model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if any(c is None for c in covs):
        raise RuntimeError("some norms never saw an input during the calibration forward")
    return covs  # type: ignore[return-value]


def principal_axes(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and the matching orthonormal eigenvectors (columns) of a covariance, in float64."""
    values, vectors = torch.linalg.eigh(cov.double())
    order = torch.argsort(values, descending=True)
    return values[order].clamp_min(0), vectors[:, order]
