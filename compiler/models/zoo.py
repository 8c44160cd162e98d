"""A small model zoo in plain torch: the reference workloads dopant compiles and benchmarks.

Every entry is a `ZooEntry` holding a factory, never a built model, so importing this module does
no work. `get(name).build()` makes the model in eval mode with seeded (but untrained) weights:

    model = get("resnet20").build(input_shape=(1, 3, 32, 32))

All factories take `(in_channels, num_classes, height, width)`; models whose classifier does not
depend on the spatial size (those ending in a global average pool) ignore `height` and `width`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Factory = Callable[[int, int, int, int], nn.Module]
"""Builds a model from `(in_channels, num_classes, height, width)`."""


class MLP(nn.Module):
    """Three-layer perceptron on the flattened image (the classic MNIST baseline)."""

    def __init__(self, in_channels: int, num_classes: int, height: int, width: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * height * width, 256)
        self.relu1 = nn.ReLU()
        self.dropout = nn.Dropout(0.1)
        self.fc2 = nn.Linear(256, 128)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.relu1(self.fc1(self.flatten(x))))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, padded for 28x28 inputs."""

    def __init__(self, in_channels: int, num_classes: int, height: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)  # 16*5*5 at 28x28
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two-conv residual block (He et al. 2016); a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """ResNet of BasicBlocks (He et al. 2016): CIFAR stem (section 4.2) or ImageNet stem (7x7)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else None
        self.stage_names: list[str] = []
        channels = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            stride = 1 if i == 1 else 2
            blocks = [BasicBlock(channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i}")
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = self.get_submodule(name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expand, 3x3 depthwise, linear 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """A narrow MobileNetV2 (Sandler et al. 2018) for 32x32 inputs."""

    # (expansion t, out channels c, repeats n, first stride s), as in the paper's Table 2.
    CONFIG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 2, 2),
        (6, 64, 2, 2),
        (6, 96, 1, 1),
    )

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU6()]
        channels = 16
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers += [nn.Conv2d(channels, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGGSmall(nn.Module):
    """A small VGG (Simonyan & Zisserman 2015) with BatchNorm, for 32x32 inputs."""

    CONFIG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")

    def __init__(self, in_channels: int, num_classes: int, height: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in self.CONFIG:
            if isinstance(v, int):
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                channels = v
            else:  # "M"
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * (height // 8) * (width // 8), 256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class ZooEntry:
    """A named model: how to build it and the input it expects by default."""

    name: str
    summary: str
    factory: Factory
    input_shape: tuple[int, int, int, int]  # default (N, C, H, W)
    num_classes: int

    def build(
        self, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
    ) -> nn.Module:
        """The model in eval mode for `input_shape` (N, C, H, W), with the same weights each call.

        Weights come from `torch.manual_seed(0)` inside `torch.random.fork_rng()`, so the global
        RNG state is left untouched.
        """
        shape = self.input_shape if input_shape is None else input_shape
        if len(shape) != 4:
            raise ValueError(
                f"zoo model '{self.name}' takes an (N, C, H, W) input shape, got {tuple(shape)}"
            )
        _, channels, height, width = shape
        classes = self.num_classes if num_classes is None else num_classes
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = self.factory(channels, classes, height, width)
            _init_convs(model)
        return model.eval()


def _init_convs(model: nn.Module) -> None:
    """He (kaiming) normal init with fan-in for every conv (He et al. 2015).

    torch's default conv init shrinks activations layer by layer, and fan-out (torchvision's
    choice) counts every channel of a depthwise conv; in an untrained eval-mode MobileNetV2 both
    leave activations near 1e-5 and the output is the classifier bias alone, useless for checking
    numerics. Fan-in keeps each layer's output variance near its input's.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("mlp", "3-layer perceptron, 256-128 hidden units", MLP, (1, 1, 28, 28), 10),
        ZooEntry("lenet5", "LeNet-5 (LeCun et al. 1998)", LeNet5, (1, 1, 28, 28), 10),
        ZooEntry(
            "resnet8",
            "CIFAR ResNet-8 (He et al. 2016), option-B shortcuts",
            lambda c, k, h, w: ResNet(c, k, (16, 32, 64), (1, 1, 1), imagenet_stem=False),
            (1, 1, 28, 28),
            10,
        ),
        ZooEntry(
            "resnet20",
            "CIFAR ResNet-20 (He et al. 2016), option-B shortcuts",
            lambda c, k, h, w: ResNet(c, k, (16, 32, 64), (3, 3, 3), imagenet_stem=False),
            (1, 1, 28, 28),
            10,
        ),
        ZooEntry(
            "mobilenetv2",
            "narrow MobileNetV2 (Sandler et al. 2018) for 32x32",
            lambda c, k, h, w: MobileNetV2(c, k),
            (1, 3, 32, 32),
            10,
        ),
        ZooEntry("vgg_small", "6-conv VGG with BatchNorm for 32x32", VGGSmall, (1, 3, 32, 32), 10),
        ZooEntry(
            "resnet18",
            "ImageNet ResNet-18 (He et al. 2016)",
            lambda c, k, h, w: ResNet(c, k, (64, 128, 256, 512), (2, 2, 2, 2), imagenet_stem=True),
            (1, 3, 224, 224),
            1000,
        ),
    )
}
"""Every zoo model by name, in a fixed order; entries hold factories, not built models."""


def names() -> list[str]:
    """The names of all zoo models, in registry order."""
    return list(ZOO)


def get(name: str) -> ZooEntry:
    """The zoo entry called `name`; a `ValueError` listing the valid names if there is none."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model '{name}'; available: {', '.join(ZOO)}")
    return ZOO[name]
