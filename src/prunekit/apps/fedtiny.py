"""FedTiny's two modules ("Distributed Pruning Towards Tiny Neural Networks in Federated Learning", Huang et al.,
2023), the server's side; the clients' side is in :mod:`prunekit.apps.federated_clients`, the rounds in
:func:`prunekit.apps.federated.federated_prune_`.

- **Adaptive batch-norm selection** (coarse): one candidate mask per layer-wise allocation, judged by every client
  on its own data with batch-norm statistics recomputed there (:func:`adaptive_bn_select`).
- **Progressive pruning** (fine): once the target sparsity is reached, the mask is adjusted one layer at a time,
  from the output layer back to the input, with a share of the layer's kept weights that decays on a cosine
  (:func:`adjust_plan`). In an adjustment round each client also sends, for that one layer, the ``k`` largest
  gradients of its *pruned* weights at the broadcast model (:func:`~prunekit.apps.federated_clients.client_topk_grads`:
  a top-k buffer, cheap in memory and bytes); the server sums them weighted by client size, drops the ``k`` kept
  weights of least magnitude after averaging and grows the ``k`` pruned ones of largest summed gradient, at zero
  (:func:`grow_prune_`, RigL's step with the clients' gradients). The layer's sparsity is unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..core.mask import get_mask, masked_modules, weight_of
from ..methods import prune_
from .federated_clients import Clients, client_bn_loss, effective_state, masks_of, payload_nbytes


def adaptive_bn_select(model: nn.Module, model_fn: Callable[[], nn.Module], clients: Sequence[TensorDataset],
                       sparsity: float, candidates: Sequence[str], runner: Clients, batch_size: int,
                       sparse_payload: bool = True) -> dict[str, Any]:
    """FedTiny's adaptive batch-norm selection: one candidate mask per allocation in ``candidates`` at ``sparsity``
    (magnitude on ``model``'s current weights), each evaluated by every client (:func:`client_bn_loss`); returns
    ``{"chosen", "losses" (size-weighted mean local loss per candidate), "download_bytes", "upload_bytes",
    "dense_bytes"}``. ``model`` is not changed."""
    losses: dict[str, float] = {}
    down = up = dense = 0
    n = sum(len(c) for c in clients)
    for name in candidates:
        candidate = copy.deepcopy(model)
        prune_(candidate, "magnitude", sparsity, allocation=name, progress=False)
        state, masks = effective_state(candidate), masks_of(candidate)
        down += payload_nbytes(state, sparse_payload) * len(clients)
        dense += payload_nbytes(state, False) * len(clients)
        results = runner.map(client_bn_loss, [(model_fn, state, masks, c.tensors[0], c.tensors[1], batch_size)
                                              for c in clients])
        up += 16 * len(clients)  # a float64 loss and an int64 count from each client
        losses[name] = sum(loss for loss, _ in results) / n
    dense += up
    return {"chosen": min(losses, key=losses.get), "losses": losses, "download_bytes": down, "upload_bytes": up,
            "dense_bytes": dense}


def adjust_plan(schedule: Sequence[float], layers: Sequence[str], fraction: float,
                until: float = 0.8) -> dict[int, tuple[str, float]]:
    """Which layer each round adjusts, and the share of its kept weights to move: every round from the first at
    the final sparsity up to ``until`` × rounds (never the last round, whose grown weights nothing would train),
    the layers in reverse order (output first, cycling), the share ``fraction`` × (1 + cos(π i / n)) / 2 for the
    i-th of n adjustments."""
    if not 0 < fraction <= 1:
        raise ValueError(f"adjust (the share of a layer's kept weights moved per step) must be in (0, 1], got {fraction}")
    if not 0 < until <= 1:
        raise ValueError(f"adjust_until (the share of rounds that may adjust) must be in (0, 1], got {until}")
    if not layers:
        raise ValueError("progressive pruning needs at least one masked layer")
    final = schedule[-1]
    first = next((r for r, s in enumerate(schedule) if s >= final and final > 0), len(schedule))
    rounds = [r for r in range(first, len(schedule) - 1) if r < until * len(schedule)]
    order = list(layers)[::-1]
    n = len(rounds)
    return {r: (order[i % len(order)], fraction * (1 + math.cos(math.pi * i / n)) / 2) for i, r in enumerate(rounds)}


def grow_prune_(model: nn.Module, layer: str, topks: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float],
                share: float) -> dict[str, Any]:
    """The server's progressive-pruning step on ``layer`` of ``model`` (in place): sum the clients' top-k gradients
    ``topks`` (``(flat indices, values)`` each) weighted by ``weights``; drop the ``k`` kept weights of least
    magnitude (k = round(``share`` × kept), at most the pruned weights any client reported); grow the ``k``
    pruned weights of largest summed gradient magnitude, set to zero. Returns what moved."""
    module = dict(model.named_modules())[layer]
    mask = get_mask(module)
    if mask is None:
        raise ValueError(f"layer {layer!r} has no mask to adjust")
    flat = mask.reshape(-1).clone()
    summed = torch.zeros(flat.numel(), dtype=torch.float32)
    for (idx, val), w in zip(topks, weights):
        summed.index_add_(0, idx, float(w) * val.float())
    kept = flat.nonzero().squeeze(1)
    candidates = (summed != 0) & (flat == 0)
    k = min(int(round(share * kept.numel())), int(candidates.sum()), kept.numel())
    if k <= 0:
        return {"layer": layer, "k": 0, "grown": [], "dropped": []}
    w = weight_of(module, "weight").detach().reshape(-1)
    drop = kept[w[kept].abs().topk(k, largest=False).indices]
    scores = torch.where(candidates, summed.abs(), torch.full_like(summed, -1.0))
    grow = scores.topk(k).indices
    flat[drop] = 0
    flat[grow] = 1
    with torch.no_grad():
        weight_of(module, "weight").view(-1)[grow] = 0.0
    mask.copy_(flat.reshape(mask.shape))  # replaced, not intersected as set_mask_ would
    return {"layer": layer, "k": k, "grown": grow.sort().values.tolist(), "dropped": drop.sort().values.tolist()}


def masked_layers(model: nn.Module) -> list[str]:
    """The names of ``model``'s masked modules, in module order (input to output)."""
    return [name for name, _ in masked_modules(model)]
