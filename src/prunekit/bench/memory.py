"""Peak resident memory of this process while a block of code runs (sampled by a thread)."""

from __future__ import annotations

import os
import threading
import time


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager: ``start_bytes``, ``peak_bytes`` and ``added_bytes`` (peak − start) of the RSS,
    sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.start_bytes = self.peak_bytes = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_bytes())

    @property
    def added_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)
