"""Measurements: accuracy, and (as they land) perplexity, latency, size."""

from .accuracy import accuracy

__all__ = ["accuracy"]
