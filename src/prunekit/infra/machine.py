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
