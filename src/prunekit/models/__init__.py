"""Model loaders and small reference networks."""

from .reference import MLP, BasicBlock, ResNetStyle, SmallCNN
from .structured_zoo import DenseNetStyle, GroupedStyle, MobileNetV2Style, VGGStyle

__all__ = ["MLP", "BasicBlock", "DenseNetStyle", "GroupedStyle", "MobileNetV2Style", "ResNetStyle", "SmallCNN", "VGGStyle"]
