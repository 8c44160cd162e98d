"""An example of a model of one's own for `dopant import examples/mynet.py:build`.

A small CNN for 3x32x32 images with the layers dopant imports: a strided conv, a depthwise conv
with a residual add, batch norm, ReLU6, max and adaptive average pooling, and a classifier.
"""

from __future__ import annotations

from torch import Tensor, nn


class MyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = nn.functional.relu(x + self.depthwise(x))
        return self.head(self.pool(x))


def build() -> nn.Module:
    """The factory `dopant import` calls: a model in eval mode (random weights)."""
    return MyNet().eval()
