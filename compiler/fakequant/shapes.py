"""The torch function of each integer op whose work its shape properties fix: convolution
geometry, pooling, reshape and relu (for `fakequant.build`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor

from dopant.compiler.fakequant import numerics as qn
from dopant.dialects.qnn import (
    AvgPool2DOp,
    Conv2DOp,
    GlobalAvgPoolOp,
    MaxPool2DOp,
    QnnOp,
    QuantParamsAttr,
    ReluOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import ints, shape
from dopant.runtime import kernels


def conv_fn(op: Conv2DOp) -> Callable[[Tensor, Tensor], Tensor]:
    """The convolution of integer input and weights with `op`'s geometry, without bias."""
    strides, padding, dilation = ints(op.strides), ints(op.padding), ints(op.dilation)
    return partial(
        qn.conv2d,
        strides=(strides[0], strides[1]),
        padding=(padding[0], padding[1], padding[2], padding[3]),
        dilation=(dilation[0], dilation[1]),
        groups=op.groups.value.data,
    )


def _window(op: MaxPool2DOp | AvgPool2DOp, dilation: tuple[int, ...]) -> qn.Window:
    """The window geometry of a pool on the IR's (static) input and output sizes."""
    kernel, strides, padding = op.pool_props()
    _, _, h, w = shape(op.input)
    _, _, ho, wo = shape(op.output)
    top, bottom, left, right = padding
    rows = (ho - 1) * strides[0] + dilation[0] * (kernel[0] - 1) + 1 - (top + h + bottom)
    cols = (wo - 1) * strides[1] + dilation[1] * (kernel[1] - 1) + 1 - (left + w + right)
    return qn.Window(
        (kernel[0], kernel[1]),
        (strides[0], strides[1]),
        (dilation[0], dilation[1]),
        (top, bottom, left, right),
        (max(rows, 0), max(cols, 0)),
        (ho, wo),
    )


def move_fn(op: QnnOp, params: QuantParamsAttr) -> qn.UnaryFn:
    """What an op that only moves integers does to them."""
    if isinstance(op, MaxPool2DOp):
        pad_value = 0.0 if op.zero_pad is not None else float(params.qmin)  # storage minimum
        return partial(qn.max_pool, window=_window(op, ints(op.dilation)), pad_value=pad_value)
    if isinstance(op, AvgPool2DOp):
        kernel, strides, padding = op.pool_props()
        _, _, h, w = shape(op.input)
        pool = kernels.Pool.of(kernel, strides, padding, op.ceil_mode is not None)
        divisor = kernels.avg_pool_divisor((h, w), pool, op.count_include_pad is not None)
        # A window without input elements sums to 0 and averages to 0, as in the reference.
        divisor_t = torch.tensor(np.maximum(divisor, 1), dtype=torch.float64)
        return partial(qn.avg_pool, window=_window(op, (1, 1)), divisor=divisor_t)
    if isinstance(op, GlobalAvgPoolOp):
        return qn.global_avg_pool
    if isinstance(op, ReshapeOp):
        return partial(qn.reshape, shape=shape(op.output)[1:])
    assert isinstance(op, ReluOp)
    return torch.relu
