"""Calibration data as a list of model-input batches: one batcher for every calibrated step
(the block-by-block engine, activation importances of heads and neurons, block influence)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_INT = (torch.int64, torch.int32, torch.int16, torch.uint8)

_FORMS = ("a LongTensor of token ids (nsamples, seqlen), a list of them, or a list of dicts of model inputs "
          "(e.g. prunekit.datasets.text.calibration_windows(...))")


def _is_ids(x: Any) -> bool:
    return isinstance(x, Tensor) and x.dim() == 2 and x.dtype in _INT


def _split_ids(ids: Tensor, batch_size: int | None) -> list[dict[str, Tensor]]:
    ids = ids.long()
    chunks = ids.split(batch_size) if batch_size else [ids]
    return [{"input_ids": c} for c in chunks]


def calibration_batches(calibration: Any, batch_size: int | None = None, *, tokens: bool = False) -> list[Any]:
    """Calibration data as a list of batches, each a dict of keyword inputs, a tuple of positional inputs
    or one input tensor (what :func:`prunekit.infra.calling.call_model` takes).

    Token ids ``(nsamples, seqlen)`` become ``{"input_ids": ...}`` batches of at most ``batch_size``
    rows (all rows in one batch when ``batch_size`` is None); a list of rows of one length is stacked
    first. A dict is one batch; a list of dicts, tensors or tuples is a list of batches. With
    ``tokens=True`` only token ids and dicts are accepted (language-model calibration): anything else
    is a ValueError that says what was expected.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if _is_ids(calibration):
        return _split_ids(calibration, batch_size)
    if isinstance(calibration, dict) and calibration:
        return [calibration]
    if isinstance(calibration, Tensor) and not tokens and calibration.dim() > 1:
        return [calibration]  # one batch of non-token inputs (pixel values, embeddings)
    if isinstance(calibration, Tensor):
        raise ValueError(f"calibration must be integer token ids of shape (nsamples, seqlen); got {calibration.dtype} "
                         f"{tuple(calibration.shape)} (e.g. prunekit.datasets.text.calibration_windows(...))")
    if isinstance(calibration, (list, tuple)) and calibration:
        if all(isinstance(c, dict) for c in calibration):
            return list(calibration)
        if all(isinstance(c, Tensor) and c.dtype in _INT and c.dim() in (1, 2) for c in calibration):
            rows = [c if c.dim() == 2 else c.reshape(1, -1) for c in calibration]
            if len({r.shape[1] for r in rows}) == 1 and (tokens or batch_size is not None):
                return _split_ids(torch.cat(rows), batch_size)
            return [{"input_ids": r.long()} for r in rows]
        if not tokens and all(isinstance(c, (Tensor, tuple, list)) for c in calibration):
            return list(calibration)
    shape = f" of dtype {calibration.dtype} and shape {tuple(calibration.shape)}" if isinstance(calibration, Tensor) else ""
    raise ValueError(
        f"calibration must be {_FORMS}" + ("" if tokens else ", or model inputs (a tensor, a dict, a list of them)")
        + f"; got {type(calibration).__name__}{shape}"
    )
