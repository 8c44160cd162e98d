"""The arithmetic of the fake-quant network (`dopant.compiler.fakequant`): straight-through
rounding, LSQ steps, and what each integer op computes.

Values flow in integer units: a float64 tensor u holding exactly the integers the integer
reference computes, with a separate step s, so the real value is u * s. Every rounding is
straight-through (Bengio et al. 2013): the forward value is the integer result, taken from
`runtime.intops` itself where the reference rounds in integers (requantize, add, pooling), and
the gradient is that of the unrounded real quotient, clamped as the integer result is. Since the
backward pass sees u * s through products of steps (conv and linear are bilinear), each step
gets exactly the LSQ gradient d(round(clamp(v / s)) s)/ds = round(v / s) - v / s inside the
clamp range and the clamp bound outside it (Esser et al., ICLR 2020, eq. 3).

float64 keeps sums of integer products exact below 2^53, the same bound the reference uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dopant.runtime import intops

UnaryFn = Callable[[Tensor], Tensor]

# LSQ leaves the step unconstrained; the integer IR needs it positive, so the forward pass uses
# at least this fraction of the step's initial value (the gradient still flows, see lsq_step).
MIN_STEP_FRACTION = 1e-3


def straight_through(exact: Tensor, surrogate: Tensor) -> Tensor:
    """`exact` in the forward pass (bit for bit: x - x is exactly 0), the gradient of
    `surrogate` in the backward pass."""
    return exact + (surrogate - surrogate.detach())


def lsq_grad_scale(numel: int, qmax: int) -> float:
    """LSQ's step gradient scale g = 1 / sqrt(N Q_P) (Esser et al. 2020, section 2.2)."""
    return 1.0 / math.sqrt(numel * qmax)


def lsq_step(step: Tensor, grad_scale: float, floor: Tensor | float) -> Tensor:
    """The step the forward pass uses: max(step, floor), with its gradient scaled by
    `grad_scale` and passed straight through the floor, so a step pushed below it can recover."""
    scaled = step * grad_scale
    return straight_through(torch.clamp(step.detach(), min=floor), scaled)


def along_channels(values: Tensor, ndim: int) -> Tensor:
    """A per-tensor () or per-channel [C] tensor shaped to broadcast along axis 1 of NCHW or
    [batch, features] data."""
    return values if values.ndim == 0 else values.reshape(1, -1, *([1] * (ndim - 2)))


def along_rows(values: Tensor, ndim: int) -> Tensor:
    """Per-output-channel steps ([O] or [1]) shaped to broadcast along axis 0 of a weight."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def fake_quantize(x: Tensor, step: Tensor, qmin: float, qmax: float) -> Tensor:
    """round(clamp(x / step, qmin, qmax)) in integer units, rounding half to even as
    `intops.quantize` and the quantize pass (np.rint) do; `step` broadcasts against `x`."""
    v = torch.clamp(x / step, qmin, qmax)
    return straight_through(torch.round(v), v)


def _ints(u: Tensor) -> np.ndarray:
    """The integers a u tensor holds, as the int64 array `intops` takes."""
    return u.detach().cpu().numpy().astype(np.int64)


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def _like(q: np.ndarray, u: Tensor) -> Tensor:
    return torch.as_tensor(q, dtype=u.dtype, device=u.device)


def activation_bounds(
    act: tuple[float, float] | None, step: Tensor, qmin: int, qmax: int
) -> tuple[int, int]:
    """The integer output range of a requantize or add: the storage range narrowed by a fused
    activation exactly as the reference narrows it (`intops.activation_range`, TFLite's
    CalculateActivationRangeQuantized, which rounds half away from zero)."""
    if act is None:
        return qmin, qmax
    lo, hi = intops.activation_range(*act, _numpy(step), 0, qmin, qmax)
    return int(lo), int(hi)


def requantize(
    u: Tensor, in_scale: Tensor, out_step: Tensor, bounds: tuple[int, int], rounding: str
) -> Tensor:
    """`qnn.requantize` from `in_scale` (() or [C] along axis 1) to `out_step`.

    The forward value is `intops.requantize` with M = in_scale / out_step quantized to Q0.31
    (TFLite's QuantizeMultiplier), as the reference computes it. A float formula such as
    round(u M) cannot follow gemmlowp's double rounding: it rounds to 2^-n first when M is
    about 2^-n, so M = 0.325 takes u = 4 (exactly 1.3) to 2, and measured on the zoo models
    at W4A4 such a formula is within one LSB on only 8-38% of the outputs.
    """
    multiplier = in_scale / out_step
    v = torch.clamp(u * along_channels(multiplier, u.ndim), *bounds)
    m0, shift = intops.quantize_multipliers(_numpy(multiplier))
    axis = None if multiplier.ndim == 0 else 1
    q = intops.requantize(_ints(u), 0, 0, m0, shift, bounds[0], bounds[1], rounding, axis)
    return straight_through(_like(q, u), v)


def add(
    lhs: tuple[Tensor, Tensor],
    rhs: tuple[Tensor, Tensor],
    out_step: Tensor,
    bounds: tuple[int, int],
    rounding: str,
) -> Tensor:
    """`qnn.add` of (u, step) operands: `intops.add_rescaled` (TFLite's int8 ADD, one final
    rounding after a 20-bit left shift) forward, (u_l s_l + u_r s_r) / s_out backward."""
    (u_l, s_l), (u_r, s_r) = lhs, rhs
    v = torch.clamp((u_l * s_l + u_r * s_r) / out_step, *bounds)
    q = intops.add_rescaled(
        _ints(u_l),
        _ints(u_r),
        (0, 0, 0),
        intops.quantize_multipliers(_numpy(s_l / out_step)),
        intops.quantize_multipliers(_numpy(s_r / out_step)),
        bounds[0],
        bounds[1],
        rounding,
    )
    return straight_through(_like(q, u_l), v)


def rounding_average(total: Tensor, divisor: Tensor) -> Tensor:
    """total / divisor rounded half away from zero (`intops.rounding_divide`, TFLite's integer
    AveragePool) forward, the exact quotient backward. `divisor` is positive."""
    q = intops.rounding_divide(_ints(total), _ints(divisor))
    return straight_through(_like(q, total), total / divisor)


def global_avg_pool(u: Tensor) -> Tensor:
    """`qnn.global_avg_pool` on integers: the rounded mean over H and W, as [N, C, 1, 1]."""
    total = u.sum(dim=(2, 3), keepdim=True)
    divisor = torch.tensor(max(u.shape[2] * u.shape[3], 1), dtype=u.dtype, device=u.device)
    return rounding_average(total, divisor)


@dataclass(frozen=True)
class Window:
    """The geometry of one pooling op on inputs of a fixed H x W, as the reference's kernels
    lay it out: explicit padding, then (ceil mode) an overhang past the padding that no window
    value comes from, then windows without implicit padding, cropped to `out_hw`."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right, as in the IR
    overhang: tuple[int, int]  # extra rows, columns
    out_hw: tuple[int, int]

    def padded(self, u: Tensor, pad_value: float, overhang_value: float) -> Tensor:
        top, bottom, left, right = self.padding
        x = F.pad(u, (left, right, top, bottom), value=pad_value)
        rows, cols = self.overhang
        return F.pad(x, (0, cols, 0, rows), value=overhang_value) if rows or cols else x

    def crop(self, y: Tensor) -> Tensor:
        return y[:, :, : self.out_hw[0], : self.out_hw[1]]


def max_pool(u: Tensor, window: Window, pad_value: float) -> Tensor:
    """`qnn.max_pool2d` on integers: padding with `pad_value` (the storage minimum, or 0 with
    `zero_pad`); the ceil-mode overhang never wins (kernels.max_pool2d)."""
    x = window.padded(u, pad_value, -math.inf)
    return window.crop(F.max_pool2d(x, window.kernel, window.strides, 0, window.dilation))


def avg_pool(u: Tensor, window: Window, divisor: Tensor) -> Tensor:
    """`qnn.avg_pool2d` on integers: window sums over zero padding divided by the reference's
    per-window `divisor` ([ho, wo], kernels.avg_pool_divisor, at least 1) with rounding."""
    x = window.padded(u, 0.0, 0.0)
    total = window.crop(F.avg_pool2d(x, window.kernel, window.strides, 0, divisor_override=1))
    return rounding_average(total, divisor.to(total))


def conv2d(
    u: Tensor,
    w: Tensor,
    *,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """`qnn.conv2d` without bias; `padding` is [top, bottom, left, right] zeros, which torch
    takes as an argument only when symmetric."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return F.conv2d(u, w, None, strides, (top, left), dilation, groups)
    return F.conv2d(F.pad(u, (left, right, top, bottom)), w, None, strides, 0, dilation, groups)


def reshape(u: Tensor, *, shape: tuple[int, ...]) -> Tensor:
    """`qnn.reshape` of a batch: the same per-sample reshape at any batch size."""
    return u.reshape(u.shape[0], *shape)
