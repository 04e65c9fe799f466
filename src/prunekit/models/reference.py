"""Small reference networks used by the demo, the tests and the benchmarks."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """A multi-layer perceptron (for scikit-learn's 8×8 digits: 64 inputs, 10 classes)."""

    def __init__(self, in_features: int = 64, hidden: tuple[int, ...] = (128, 64), classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.flatten(1)))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A three-convolution CNN for 28×28 grey images (Fashion-MNIST): ~0.1 M parameters, fast on a CPU."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            *_conv_bn(in_channels, a), nn.MaxPool2d(2),
            *_conv_bn(a, b), nn.MaxPool2d(2),
            *_conv_bn(b, c), nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3×3 convolutions with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    """A ResNet-style CNN for 28×28 grey images: a 3×3 stem, three stages of two basic blocks
    (widths 32/64/128, strides 1/2/2), global pooling and a linear head; 0.70 M parameters, 81 M MACs."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), classes: int = 10, in_channels: int = 1,
                 blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, w, stride)] + [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))
