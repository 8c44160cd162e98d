"""MACs and parameters of a network's layers as functions of how many channels each keeps.

Counts are per sample (the batch axis left out). Parameters count what torch counts: weights,
biases, and a batch norm's scale and shift (its running statistics are buffers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.dialects import func

from dopant.dialects.qnn import BatchNormOp, Conv2DOp, LinearOp
from dopant.dialects.qnn.base import shape

MemberKey = tuple[str, str]  # (module path, "out" | "in" | "channel")


@dataclass(frozen=True)
class LayerShape:
    """One layer's full-width shape: enough to count its MACs and parameters at any width."""

    path: str
    op: str
    in_channels: int
    out_channels: int
    groups: int
    kernel_area: int
    out_pixels: int
    has_bias: bool

    @property
    def keys(self) -> tuple[MemberKey, ...]:
        if self.op == "batch_norm":
            return ((self.path, "channel"),)
        return ((self.path, "in"), (self.path, "out"))

    def full_widths(self) -> dict[MemberKey, int]:
        """Each of the layer's dimensions (`keys`) at its full width."""
        if self.op == "batch_norm":
            return {(self.path, "channel"): self.out_channels}
        return {(self.path, "in"): self.in_channels, (self.path, "out"): self.out_channels}

    def counts(self, widths: Mapping[MemberKey, int]) -> tuple[int, int]:
        """(MACs, parameters) when the layer keeps `widths` channels (full width if absent)."""
        if self.op == "batch_norm":
            return 0, 2 * widths.get((self.path, "channel"), self.out_channels)
        n_in = widths.get((self.path, "in"), self.in_channels)
        n_out = widths.get((self.path, "out"), self.out_channels)
        depthwise = self.in_channels == self.groups and self.groups > 1
        per_group_in = 1 if depthwise else n_in // self.groups
        weights = n_out * per_group_in * self.kernel_area
        bias = n_out if self.has_bias else 0
        return weights * self.out_pixels, weights + bias


def layer_shapes(fn: func.FuncOp) -> list[LayerShape]:
    """Every conv, linear and batch norm layer of `fn`, in program order."""
    layers = []
    for op in fn.body.block.ops:
        if isinstance(op, Conv2DOp):
            o, _, kh, kw = shape(op.weight)
            _, c, h, w = shape(op.output)
            layers.append(
                LayerShape(
                    op.path.data,
                    "conv2d",
                    shape(op.input)[1],
                    o,
                    op.groups.value.data,
                    kh * kw,
                    h * w,
                    op.bias is not None,
                )
            )
        elif isinstance(op, LinearOp):
            out, features = shape(op.weight)
            layers.append(
                LayerShape(op.path.data, "linear", features, out, 1, 1, 1, op.bias is not None)
            )
        elif isinstance(op, BatchNormOp):
            c = shape(op.output)[1]
            pixels = int(np.prod(shape(op.output)[2:], dtype=np.int64))
            layers.append(LayerShape(op.path.data, "batch_norm", c, c, 1, 1, pixels, True))
    return layers


def full_widths(layers: Sequence[LayerShape]) -> dict[MemberKey, int]:
    """Every member dimension of `layers` at its full width."""
    return {key: width for layer in layers for key, width in layer.full_widths().items()}


def totals(layers: list[LayerShape], widths: Mapping[MemberKey, int]) -> tuple[int, int]:
    """(MACs, parameters) of the whole network at `widths`."""
    macs = params = 0
    for layer in layers:
        m, p = layer.counts(widths)
        macs, params = macs + m, params + p
    return macs, params
