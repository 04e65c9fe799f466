"""What the machine has free right now (memory), for decisions such as keeping a second copy of a model."""

from __future__ import annotations


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


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``); returns whether
    it could. Large tensors freed between layers stay in the heap as fragments otherwise, and a walk that
    frees a layer's temporaries and allocates the next one's grows its resident memory by hundreds of MB.
    A no-op (False) where the C library has no ``malloc_trim`` (macOS, Windows, musl)."""
    if not _LIBC:
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.append(libc.malloc_trim if hasattr(libc, "malloc_trim") else None)
        except (OSError, AttributeError):
            _LIBC.append(None)
    trim = _LIBC[0]
    if trim is None:
        return False
    trim(0)
    return True
