"""Measurements: accuracy, and (as they land) perplexity, latency, size."""

from .accuracy import accuracy
from ..core.latency import Latency, latency

__all__ = ["Latency", "accuracy", "latency"]
