"""One check that numbers are finite before anything is ranked: a NaN or an infinity in a score, a
weight or a Hessian is an error naming what and which layer, never a silently wrong mask."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """A score, weight or statistic holds NaN or infinite values."""


def check_finite(values: Tensor, what: str, layer: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` when ``values`` holds NaN or ±inf, naming ``what`` (e.g. "snip
    scores") and the ``layer``; ``hint`` says where they may come from."""
    if not values.is_floating_point() and not values.is_complex():
        return
    if bool(torch.isfinite(values.sum())):  # one reduction: a NaN or ±inf anywhere makes the sum non-finite
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):  # the sum overflowed on finite values
        return
    nan = int(torch.isnan(values).sum())
    inf = int((~finite).sum()) - nan
    parts = [f"{nan:,} NaN" if nan else "", f"{inf:,} infinite" if inf else ""]
    raise NonFiniteError(
        f"{what} of layer {layer!r} hold {' and '.join(p for p in parts if p)} value(s) of {values.numel():,}; "
        f"{hint or 'check the weights and the data for NaN/inf'}. Nothing was pruned"
    )
