"""What every sensitivity method reads: the hooked model, the batches, each layer's input range."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

from dopant.codesign._sensitivity.taps import Taps
from dopant.support.progress import progress as bar

Costs = dict[str, dict[int, float]]  # layer path -> bit width -> cost


@dataclass(frozen=True)
class Run:
    """The model with `taps` on its layers, the (inputs, labels) batches, [min, max] of each
    layer's input over them, the widths to cost, and whether weights are quantized per output
    channel; `show` draws a progress bar over the batches."""

    taps: Taps
    model: nn.Module
    data: list[tuple[Tensor, Tensor]]
    ranges: dict[str, tuple[float, float]]
    widths: list[int]
    per_channel: bool
    show: bool
    hessian: str = "gauss-newton"

    def batches(self) -> Iterable[tuple[Tensor, Tensor]]:
        what = "bit sensitivity"
        return bar(self.data, show=self.show, total=len(self.data), what=what, unit="batch")

    @property
    def samples(self) -> int:
        return sum(len(x) for x, _ in self.data)


def means(sums: Costs, samples: int) -> Costs:
    """Sample-weighted sums divided by the number of samples."""
    return {path: {b: v / samples for b, v in row.items()} for path, row in sums.items()}
