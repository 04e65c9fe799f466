"""Data sets that need no download at run time."""

from .digits import load_digits
from .fashion_mnist import fashion_mnist_available, load_fashion_mnist

__all__ = ["fashion_mnist_available", "load_digits", "load_fashion_mnist"]
