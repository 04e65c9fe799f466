"""Small CNNs of the shapes structured pruning must handle: VGG (a plain stack), MobileNetV2
(inverted residuals, depthwise convolutions), DenseNet (concatenation), and a grouped-conv /
GroupNorm net. Sized for 28×28 grey images; fast on a CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VGGStyle(nn.Module):
    """A VGG-style stack: conv-BN-ReLU pairs with max-pooling, then a two-layer classifier on the
    flattened feature map (so ``flatten`` couples the last conv's channels to the first Linear)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = 28 // 2 ** len(widths)
        self.classifier = nn.Sequential(nn.Linear(cin * side * side, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand, 3×3 depthwise, 1×1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2Style(nn.Module):
    """A MobileNetV2-style network: a stem, inverted residual blocks (depthwise), a 1×1 head conv."""

    def __init__(self, classes: int = 10, in_channels: int = 1, width: int = 16, expand: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6(inplace=True))
        cfg = [(width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)]
        blocks, cin = [], width
        for cout, stride in cfg:
            blocks.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 8 * width, 1, bias=False), nn.BatchNorm2d(8 * width),
                                  nn.ReLU6(inplace=True))
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class DenseLayer(nn.Module):
    """DenseNet's layer: BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, its output concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=False), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNetStyle(nn.Module):
    """A DenseNet-style net: a stem, one dense block of concatenating layers, a transition, a head."""

    def __init__(self, classes: int = 10, in_channels: int = 1, stem: int = 16, growth: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.block = nn.Sequential(*[DenseLayer(stem + i * growth, growth) for i in range(layers)])
        width = stem + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Conv2d(width, width // 2, 1),
                                        nn.AvgPool2d(2))
        self.fc = nn.Linear(width // 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.transition(self.block(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class GroupedStyle(nn.Module):
    """A small net with a grouped convolution, GroupNorm, a channel split (chunk) and a SiLU gate."""

    def __init__(self, classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 2 * width, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 2 * width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.chunk(nn.functional.silu(self.gn1(self.conv1(x))), 2, dim=1)
        y = self.conv3(self.conv2(a) * torch.sigmoid(b))
        return self.fc(self.ln(y.mean((2, 3))))
