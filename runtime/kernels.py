"""Numpy kernels for the float semantics of the `qnn` ops (NCHW tensors, OIHW weights).

Each kernel is a pure function of numpy arrays and Python numbers and returns a new array of the
input's dtype: float32 inputs compute in float32 (BLAS sgemm), which matches torch's CPU kernels
to about 1e-6 of the output's magnitude; float64 inputs compute in float64, which the reference
interpreter uses to sum integer products exactly (every partial sum below 2^53).

Window geometry follows torch: `padding` is [top, bottom, left, right]; with `ceil_mode` the last
window may start in the padding but never past it (`window_out`). Convolution is im2col through
`sliding_window_view` and one batched matmul over (batch, group), so a depthwise convolution with
hundreds of groups never loops over channels in Python; pooling loops over the kernel offsets only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dopant.dialects.shapes import window_out
from dopant.runtime import intops

# im2col copies at most this many elements (8 MiB of float32) per GEMM; larger batches are cut
# into slices, which measured faster than one big copy on 2 cores (cache-sized blocks).
_COLS_BUDGET = 1 << 21


def _out_hw(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool = False,
) -> tuple[int, int]:
    top, bottom, left, right = padding
    return (
        window_out(x.shape[2], kernel[0], strides[0], top, bottom, dilation[0], ceil_mode),
        window_out(x.shape[3], kernel[1], strides[1], left, right, dilation[1], ceil_mode),
    )


def _padded(
    x: np.ndarray,
    padding: Sequence[int],
    extent: tuple[int, int],
    pad_value: float,
    overhang_value: float,
) -> np.ndarray:
    """`x` inside its explicit padding (`pad_value`), grown to at least `extent` rows and columns
    with `overhang_value` (the part of a ceil-mode window that lies past the padding)."""
    n, c, h, w = x.shape
    top, bottom, left, right = padding
    rows, cols = top + h + bottom, left + w + right
    fill_rows, fill_cols = max(extent[0] - rows, 0), max(extent[1] - cols, 0)
    if pad_value == overhang_value or fill_rows == fill_cols == 0:
        if not any(padding) and fill_rows == fill_cols == 0:
            return x
        widths = ((0, 0), (0, 0), (top, bottom + fill_rows), (left, right + fill_cols))
        return np.pad(x, widths, constant_values=pad_value)
    out = np.full((n, c, rows + fill_rows, cols + fill_cols), overhang_value, x.dtype)
    out[:, :, :rows, :cols] = pad_value
    out[:, :, top : top + h, left : left + w] = x
    return out


def _offsets(
    xp: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    out_hw: tuple[int, int],
) -> Iterator[np.ndarray]:
    """For each kernel offset (i, j), the strided view of `xp` it reads for every output."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, strides, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            yield xp[:, :, r : r + (ho - 1) * sh + 1 : sh, c : c + (wo - 1) * sw + 1 : sw]


def _extent(
    out_hw: tuple[int, int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    """Rows and columns of padded input that `out_hw` windows reach."""
    return (
        (out_hw[0] - 1) * strides[0] + dilation[0] * (kernel[0] - 1) + 1,
        (out_hw[1] - 1) * strides[1] + dilation[1] * (kernel[1] - 1) + 1,
    )


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> np.ndarray:
    """2-D cross-correlation as torch's `F.conv2d`, with [top, bottom, left, right] zero padding.

    `x` is [N, C, H, W], `w` is [O, C / groups, kh, kw], `b` is [O] or None.
    """
    n, _, _, _ = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = _out_hw(x, (kh, kw), strides, padding, dilation)
    if n == 0 or ho == 0 or wo == 0:
        return np.zeros((n, o, ho, wo), x.dtype)
    xp = _padded(x, padding, _extent((ho, wo), (kh, kw), strides, dilation), 0, 0)
    dh, dw = dilation
    sh, sw = strides
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    # [N, C, H', W', span_h, span_w] -> strided outputs and dilated taps: [N, C, ho, wo, kh, kw].
    win = sliding_window_view(xp, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]
    k, og = cg * kh * kw, o // groups
    weights = w.reshape(groups, og, k).astype(x.dtype, copy=False)
    step = max(1, _COLS_BUDGET // max(1, groups * k * ho * wo))
    parts = []
    for start in range(0, n, step):
        part = win[start : start + step]
        m = part.shape[0]
        # im2col, one copy of the strided view: [groups, cg * kh * kw, batch * ho * wo], so
        # each group is a single GEMM however large the batch.
        cols = part.transpose(1, 4, 5, 0, 2, 3).reshape(groups, k, m * ho * wo)
        y = np.matmul(weights, cols)  # [groups, O / groups, batch * ho * wo]
        parts.append(y.reshape(o, m, ho, wo).transpose(1, 0, 2, 3))
    y = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0])
    if b is not None:
        y += b.astype(x.dtype, copy=False).reshape(1, o, 1, 1)
    return y


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """y = x W^T + b for x [batch, in], W [out, in], b [out] or None (torch's `F.linear`)."""
    y = x @ w.astype(x.dtype, copy=False).T
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    return y


def batch_norm(
    x: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Inference batch norm over axis 1 of a rank-2 or rank-4 `x`.

    y = x * a + c with a = scale / sqrt(var + eps) and c = shift - mean * a, as torch's CPU kernel
    computes it; a and c are formed in float64 and rounded once to x's dtype.
    """
    alpha = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    beta = shift.astype(np.float64) - mean.astype(np.float64) * alpha
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * alpha.astype(x.dtype).reshape(shape) + beta.astype(x.dtype).reshape(shape)


def _lowest(dtype: np.dtype) -> float:
    return -np.inf if np.issubdtype(dtype, np.floating) else int(np.iinfo(dtype).min)


@dataclass(frozen=True)
class Pool:
    """Pooling geometry as torch takes it: kernel and strides as (h, w), padding as [top, bottom,
    left, right], dilation (max pooling only) and ceil mode."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    ceil_mode: bool = False
    dilation: tuple[int, int] = (1, 1)

    @staticmethod
    def of(
        kernel: Sequence[int],
        strides: Sequence[int],
        padding: Sequence[int],
        ceil_mode: bool = False,
        dilation: Sequence[int] = (1, 1),
    ) -> Pool:
        k, s, p, d = tuple(kernel), tuple(strides), tuple(padding), tuple(dilation)
        return Pool((k[0], k[1]), (s[0], s[1]), (p[0], p[1], p[2], p[3]), ceil_mode, (d[0], d[1]))

    def out_hw(self, x: np.ndarray) -> tuple[int, int]:
        return _out_hw(x, self.kernel, self.strides, self.padding, self.dilation, self.ceil_mode)

    def windows(
        self, x: np.ndarray, pad_value: float, overhang_value: float
    ) -> Iterator[np.ndarray]:
        """For each kernel offset, the view of padded `x` it reads for every output window."""
        out_hw = self.out_hw(x)
        extent = _extent(out_hw, self.kernel, self.strides, self.dilation)
        xp = _padded(x, self.padding, extent, pad_value, overhang_value)
        return _offsets(xp, self.kernel, self.strides, self.dilation, out_hw)


def max_pool2d(x: np.ndarray, pool: Pool, zero_pad: bool) -> np.ndarray:
    """Max pooling as torch's `F.max_pool2d`; padding is -inf, or zeros with `zero_pad`.

    The ceil-mode overhang past the padding never wins: it is -inf (the dtype's minimum for
    integers) even with `zero_pad`. A window that lies wholly in -inf padding gives -inf.
    """
    out_hw = pool.out_hw(x)
    if 0 in x.shape[:2] or 0 in out_hw:
        return np.zeros(x.shape[:2] + out_hw, x.dtype)
    lowest = _lowest(x.dtype)
    views = pool.windows(x, 0 if zero_pad else lowest, lowest)
    y = next(views).copy()
    for view in views:
        np.maximum(y, view, out=y)
    return y


def sum_pool2d(x: np.ndarray, pool: Pool) -> np.ndarray:
    """Window sums over zero padding: the numerator of average pooling (exact for integers)."""
    out_hw = pool.out_hw(x)
    if 0 in x.shape[:2] or 0 in out_hw:
        return np.zeros(x.shape[:2] + out_hw, x.dtype)
    views = pool.windows(x, 0, 0)
    y = next(views).copy()
    for view in views:
        y += view
    return y


def _axis_counts(
    size: int, kernel: int, stride: int, lo: int, hi: int, out: int, include_pad: bool
) -> np.ndarray:
    # torch's cpu_avg_pool: start = o * stride - pad; end = min(start + kernel, size + pad);
    # pool_size = end - start counts explicit padding but not the ceil-mode overhang.
    start = np.arange(out, dtype=np.int64) * stride - lo
    end = np.minimum(start + kernel, size + hi)
    if include_pad:
        return end - start
    return np.maximum(np.minimum(end, size) - np.maximum(start, 0), 0)


def avg_pool_divisor(size_hw: Sequence[int], pool: Pool, count_include_pad: bool) -> np.ndarray:
    """The [ho, wo] divisor of each average-pooling window, exactly as torch's CPU kernel.

    With `count_include_pad` it counts input and explicit padding; without, input only. The
    ceil-mode overhang is never counted. A window wholly in padding without
    `count_include_pad` has divisor 0 (torch forbids padding beyond half the kernel).
    """
    (kh, kw), (sh, sw), (top, bottom, left, right) = pool.kernel, pool.strides, pool.padding
    ho = window_out(size_hw[0], kh, sh, top, bottom, 1, pool.ceil_mode)
    wo = window_out(size_hw[1], kw, sw, left, right, 1, pool.ceil_mode)
    rows = _axis_counts(size_hw[0], kh, sh, top, bottom, ho, count_include_pad)
    cols = _axis_counts(size_hw[1], kw, sw, left, right, wo, count_include_pad)
    return rows[:, None] * cols[None, :]


def avg_pool2d(x: np.ndarray, pool: Pool, count_include_pad: bool) -> np.ndarray:
    """Average pooling as torch's `F.avg_pool2d` (no `divisor_override`).

    A float `x` divides in its dtype; an integer `x` sums exactly in int64 and divides with
    `intops.rounding_divide` (half away from zero), the integer network's definition. A window
    with divisor 0 (wholly in padding, padding not counted) averages to 0.
    """
    divisor = avg_pool_divisor(x.shape[2:], pool, count_include_pad)
    if np.issubdtype(x.dtype, np.integer):
        return intops.rounding_divide(sum_pool2d(x.astype(np.int64), pool), np.maximum(divisor, 1))
    total = sum_pool2d(x, pool)
    divisor = divisor.astype(x.dtype)
    return np.divide(total, divisor, out=np.zeros_like(total), where=divisor > 0)


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """Mean over H and W of a float NCHW `x`, as [N, C, 1, 1] (`adaptive_avg_pool2d(x, 1)`)."""
    return np.mean(x, axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)


def apply_activation(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clamp `y` to [lo, hi] elementwise; relu is (0, inf). NaN stays NaN, as in torch."""
    if lo > -np.inf:
        y = np.maximum(y, np.array(lo, y.dtype))
    if hi < np.inf:
        y = np.minimum(y, np.array(hi, y.dtype))
    return y
