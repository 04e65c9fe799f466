"""Measurements: accuracy, MACs (``macs.py``, the one counter), and (as they land) perplexity, latency,
size. The per-layer summary is ``metrics.summary.summary`` (``prunekit.summary``)."""

from .accuracy import accuracy
from .macs import MacCount, count_macs, macs_by_module
from ..infra.latency import Latency, latency

__all__ = ["Latency", "MacCount", "accuracy", "count_macs", "latency", "macs_by_module"]
