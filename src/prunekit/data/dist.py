"""Sharing scoring work across processes with ``torch.distributed`` (gloo on CPU, nccl on GPUs).

When a process group is initialized, ``score`` gives proxy model k to rank k mod world_size and
sums the ranks' score vectors (O(N) floats each); embedding passes split the rows in contiguous
blocks and gather them. Every rank ends with the same scores one process would compute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as torch_dist


def world(distributed: bool | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, or ``(0, 1)`` without one.

    ``distributed=None`` uses a group when one is initialized; ``True`` requires one; ``False`` ignores it."""
    active = torch_dist.is_available() and torch_dist.is_initialized()
    if distributed is True and not active:
        raise ValueError("distributed=True but no torch.distributed process group is initialized; "
                         "call torch.distributed.init_process_group first (e.g. under torchrun)")
    if distributed is False or not active:
        return 0, 1
    return torch_dist.get_rank(), torch_dist.get_world_size()


def sum_across(vector: np.ndarray, world_size: int) -> np.ndarray:
    """Element-wise sum of ``vector`` over all ranks (returned on every rank)."""
    if world_size == 1:
        return vector
    t = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64))
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.numpy()


def block(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` rows of ``n`` that ``rank`` handles."""
    return rank * n // world_size, (rank + 1) * n // world_size


def gather_rows(rows: np.ndarray, n: int, world_size: int) -> np.ndarray:
    """Concatenate every rank's block of rows (from :func:`block`) into the full ``(n, d)`` array."""
    if world_size == 1:
        return rows
    if n < world_size:
        raise ValueError(f"cannot split {n} examples over {world_size} processes; use fewer processes")
    size = -(-n // world_size)
    padded = torch.zeros((size,) + rows.shape[1:], dtype=torch.float32)
    padded[: len(rows)] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    torch_dist.all_gather(parts, padded)
    pieces = []
    for r, part in enumerate(parts):
        start, stop = block(n, r, world_size)
        pieces.append(part[: stop - start])
    return torch.cat(pieces).numpy()
