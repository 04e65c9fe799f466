"""Model loaders and small reference networks."""

from .reference import MLP, BasicBlock, ResNetStyle, SmallCNN

__all__ = ["MLP", "BasicBlock", "ResNetStyle", "SmallCNN"]
