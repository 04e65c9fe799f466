"""What the machine has free right now (memory), for decisions such as keeping a second copy of a model."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def available_memory() -> int | None:
    """Bytes of memory available to new allocations without swapping (psutil's ``available``), or
    ``None`` when it cannot be read."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):  # pragma: no cover - exotic platforms
        return None


_LIBC: list = []


def _libc() -> Any:
    """The C library (ctypes), or None where it cannot be loaded."""
    if not _LIBC:
        try:
            import ctypes
            import ctypes.util

            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``); returns whether
    it could. Large tensors freed between layers stay in the heap as fragments otherwise, and a walk that
    frees a layer's temporaries and allocates the next one's grows its resident memory by hundreds of MB.
    A no-op (False) where the C library has no ``malloc_trim`` (macOS, Windows, musl)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_AFTER = 32 << 20  # glibc's ceiling for its own (dynamic) threshold on 64-bit systems


@contextlib.contextmanager
def large_allocations_mapped(threshold: int = 1 << 20) -> Iterator[bool]:
    """While inside, the C heap serves every allocation of ``threshold`` bytes or more with a memory map of its
    own (glibc's ``mallopt(M_MMAP_THRESHOLD)``), so a freed tensor's pages go back to the system at once instead
    of staying in the heap as a hole that the next, differently sized tensors cannot fill. Yields whether it
    could (False where the C library has no ``mallopt``: nothing changes).

    glibc's default raises its threshold by itself (up to 32 MB) after large frees; setting it turns that off
    for the rest of the process, so on leaving the threshold is set to that 32 MB ceiling (what a process that
    freed a large tensor has anyway) rather than back to the 128 kB start value."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, int(threshold)):
        yield False
        return
    try:
        yield True
    finally:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)


THP_ENV = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask torch to back its CPU tensors of 2 MB and more with transparent huge pages (torch's
    ``THP_MEM_ALLOC_ENABLE``: page-aligned, ``madvise(MADV_HUGEPAGE)``); returns whether they are on.

    Why: a walk over calibration windows takes and frees gigabytes of fresh activation pages (each a memory map
    of its own, :func:`large_allocations_mapped`), and with 4 kB pages the kernel's page faults took 18 % of a
    SparseGPT run's CPU time; 2 MB pages fault 512 times less often. torch reads the setting once, at the
    process's first tensor allocation: call this before any tensor exists (the ``prunekit`` command does, first
    thing); later it changes nothing and says whether they were on. An explicit ``THP_MEM_ALLOC_ENABLE`` in the
    environment (``0`` turns them off) is left as it is; the variable is not left behind for child processes."""
    import os

    import torch

    set_here = THP_ENV not in os.environ
    if set_here:
        os.environ[THP_ENV] = "1"
    try:
        # 4 MB each: page-aligned when THP is on, else 64 bytes past a page (glibc's header, torch's alignment)
        probes = [torch.empty(1 << 20) for _ in range(3)]
        return all(p.data_ptr() % 4096 == 0 for p in probes)
    finally:
        if set_here:
            os.environ.pop(THP_ENV, None)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one, else ``os.cpu_count``)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not busy with other processes right now: ``cores`` (default :func:`usable_cores`) less the
    one-minute load average rounded to the nearest core, at least 1. Where the load cannot be read, all cores.

    Why it matters: torch's default is one thread per core, and an OpenMP team with a thread on a core another
    process holds waits for that thread at every barrier. On a 2-core machine with one core busy, KD training with
    2 threads ran 26× slower than with 1 (measured here); one thread per free core avoids it."""
    import os

    cores = usable_cores() if cores is None else max(1, int(cores))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - Windows
            return cores
    return max(1, min(cores, cores - int(load + 0.5)))
