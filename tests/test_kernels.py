"""The float kernels against torch (and, where torch has no equivalent, a loop over the definition).

Every comparison asserts max |got - torch| <= 1e-5 * max |torch| and equal shapes and dtypes.
Asymmetric padding, which torch's layers do not take, is checked against `F.pad` followed by the
unpadded torch op, or against a plain Python loop written from torch's C++ kernel formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dopant.dialects.shapes import window_out
from dopant.runtime import kernels
from dopant.runtime.kernels import Pool

FAST = settings(max_examples=150)


def assert_close(got: np.ndarray, ref: torch.Tensor | np.ndarray) -> None:
    expected = ref.numpy() if isinstance(ref, torch.Tensor) else ref
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    finite = np.isfinite(expected)  # -inf where a max-pool window holds only padding
    np.testing.assert_array_equal(got[~finite], expected[~finite])
    scale = max(float(np.abs(expected[finite]).max(initial=0.0)), 1e-30)
    assert float(np.abs(got[finite] - expected[finite]).max(initial=0.0)) <= 1e-5 * scale


def randn(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = draw(st.tuples(*[st.integers(0, 3)] * 4))
    reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    return {
        "n": draw(st.integers(1, 2)),
        "cin": groups * draw(st.integers(1, 4)),
        "cout": groups * draw(st.integers(1, 4)),
        "h": draw(st.integers(max(1, reach_h - pads[0] - pads[1]), reach_h + 8)),
        "w": draw(st.integers(max(1, reach_w - pads[2] - pads[3]), reach_w + 8)),
        "kernel": (kh, kw),
        "strides": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "dilation": (dh, dw),
        "padding": pads,
        "groups": groups,
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }


@FAST
@given(conv_cases())
def test_conv2d_matches_torch_with_asymmetric_padding_groups_and_dilation(case: dict) -> None:
    x = randn(case["seed"], case["n"], case["cin"], case["h"], case["w"])
    w = randn(case["seed"] + 1, case["cout"], case["cin"] // case["groups"], *case["kernel"])
    b = randn(case["seed"] + 2, case["cout"]) if case["bias"] else None
    top, bottom, left, right = case["padding"]
    ref = F.conv2d(
        F.pad(t(x), (left, right, top, bottom)),
        t(w),
        None if b is None else t(b),
        case["strides"],
        0,
        case["dilation"],
        case["groups"],
    )
    got = kernels.conv2d(
        x, w, b, case["strides"], case["padding"], case["dilation"], case["groups"]
    )
    assert_close(got, ref)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_with_hundreds_of_channels_matches_torch(
    multiplier: int, stride: int
) -> None:
    channels = 320
    x = randn(0, 2, channels, 14, 14)
    w = randn(1, channels * multiplier, 1, 3, 3)
    b = randn(2, channels * multiplier)
    ref = F.conv2d(t(x), t(w), t(b), stride, 1, 1, channels)
    assert_close(kernels.conv2d(x, w, b, (stride, stride), (1, 1, 1, 1), (1, 1), channels), ref)


def test_conv2d_splits_large_batches_without_changing_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, w, b = randn(3, 5, 8, 9, 9), randn(4, 6, 8, 3, 3), randn(5, 6)
    ref = F.conv2d(t(x), t(w), t(b), 2, 1)
    monkeypatch.setattr(kernels, "_COLS_BUDGET", 1)  # one image per GEMM
    assert_close(kernels.conv2d(x, w, b, (2, 2), (1, 1, 1, 1), (1, 1), 1), ref)


def test_conv2d_in_float64_sums_integers_exactly() -> None:
    # The reference interpreter runs integer layers through this path: int8 x int8 products
    # summed over 576 taps stay far below 2^53, so the float64 GEMM must equal int64 arithmetic.
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (2, 64, 6, 6)).astype(np.int64)
    w = rng.integers(-128, 128, (16, 64, 3, 3)).astype(np.int64)
    got = kernels.conv2d(
        x.astype(np.float64), w.astype(np.float64), None, (1, 1), (0,) * 4, (1, 1), 1
    )
    patches = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    exact = np.einsum("nchwij,ocij->nohw", patches, w)
    assert got.dtype == np.float64
    assert np.array_equal(got.astype(np.int64), exact)


def test_linear_matches_torch() -> None:
    x, w, b = randn(0, 5, 37), randn(1, 11, 37), randn(2, 11)
    assert_close(kernels.linear(x, w, b), F.linear(t(x), t(w), t(b)))
    assert_close(kernels.linear(x, w, None), F.linear(t(x), t(w)))


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 5, 7)])
def test_batch_norm_matches_torch_in_eval_mode(shape: tuple[int, ...]) -> None:
    x = randn(0, *shape) * 3 + 1
    scale, shift, mean = randn(1, 6), randn(2, 6), randn(3, 6)
    var = np.abs(randn(4, 6)) + 0.1
    ref = F.batch_norm(t(x), t(mean), t(var), t(scale), t(shift), training=False, eps=1e-3)
    assert_close(kernels.batch_norm(x, scale, shift, mean, var, 1e-3), ref)


@st.composite
def pool_cases(draw: st.DrawFn, dilated: bool) -> dict:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    # torch takes at most half the kernel as padding.
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    return {
        "h": draw(st.integers(max(1, reach_h - 2 * ph), reach_h + 9)),
        "w": draw(st.integers(max(1, reach_w - 2 * pw), reach_w + 9)),
        "kernel": (kh, kw),
        "strides": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "pad": (ph, pw),
        "dilation": (dh, dw),
        "ceil_mode": draw(st.booleans()),
        "flag": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }


@FAST
@given(pool_cases(dilated=True))
def test_max_pool2d_matches_torch_including_ceil_mode_and_dilation(case: dict) -> None:
    x = randn(case["seed"], 2, 3, case["h"], case["w"])
    ph, pw = case["pad"]
    ref = F.max_pool2d(
        t(x), case["kernel"], case["strides"], case["pad"], case["dilation"], case["ceil_mode"]
    )
    pool = Pool.of(
        case["kernel"], case["strides"], (ph, ph, pw, pw), case["ceil_mode"], case["dilation"]
    )
    got = kernels.max_pool2d(x, pool, False)
    assert_close(got, ref)


@FAST
@given(pool_cases(dilated=False))
def test_avg_pool2d_matches_torch_including_ceil_mode_and_count_include_pad(case: dict) -> None:
    x = randn(case["seed"], 2, 3, case["h"], case["w"])
    ph, pw = case["pad"]
    ref = F.avg_pool2d(
        t(x), case["kernel"], case["strides"], case["pad"], case["ceil_mode"], case["flag"]
    )
    got = kernels.avg_pool2d(
        x,
        Pool.of(case["kernel"], case["strides"], (ph, ph, pw, pw), case["ceil_mode"]),
        case["flag"],
    )
    assert_close(got, ref)


def _loop_pool(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, ...],
    ceil_mode: bool,
    mode: str,
) -> np.ndarray:
    """Pooling written out per output from the definition (torch's cpu_avg_pool and max pool
    formulas, generalized to [top, bottom, left, right] padding)."""
    n, c, h, w = x.shape
    top, bottom, left, right = padding
    ho = window_out(h, kernel[0], strides[0], top, bottom, 1, ceil_mode)
    wo = window_out(w, kernel[1], strides[1], left, right, 1, ceil_mode)
    out = np.zeros((n, c, ho, wo), np.float64)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * strides[0] - top, j * strides[1] - left
            r1, c1 = min(r0 + kernel[0], h + bottom), min(c0 + kernel[1], w + right)
            inside = x[:, :, max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)]
            padded = (r1 - r0) * (c1 - c0) > inside.shape[2] * inside.shape[3]
            if mode == "max":
                out[:, :, i, j] = inside.max(axis=(2, 3), initial=-np.inf)
            elif mode == "max_zero_pad":
                best = inside.max(axis=(2, 3), initial=-np.inf)
                out[:, :, i, j] = np.maximum(best, 0) if padded else best
            else:
                count = (r1 - r0) * (c1 - c0) if mode == "avg_include" else inside[0, 0].size
                out[:, :, i, j] = inside.sum(axis=(2, 3)) / count
    return out.astype(x.dtype)


@FAST
@given(
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    kernel=st.tuples(st.integers(2, 4), st.integers(2, 4)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    size=st.tuples(st.integers(4, 9), st.integers(4, 9)),
    ceil_mode=st.booleans(),
    mode=st.sampled_from(["max", "max_zero_pad", "avg_include", "avg_exclude"]),
    seed=st.integers(0, 2**31),
)
def test_pooling_with_asymmetric_padding_matches_the_definition(
    pads: tuple[int, int, int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    size: tuple[int, int],
    ceil_mode: bool,
    mode: str,
    seed: int,
) -> None:
    # Padding of at most half the kernel, as torch requires, so no window is all padding.
    pads = (
        min(pads[0], kernel[0] // 2),
        min(pads[1], kernel[0] // 2),
        min(pads[2], kernel[1] // 2),
        min(pads[3], kernel[1] // 2),
    )
    x = randn(seed, 2, 2, *size)
    ref = _loop_pool(x, kernel, strides, pads, ceil_mode, mode)
    if mode.startswith("max"):
        got = kernels.max_pool2d(x, Pool.of(kernel, strides, pads, ceil_mode), mode != "max")
    else:
        got = kernels.avg_pool2d(
            x, Pool.of(kernel, strides, pads, ceil_mode), mode == "avg_include"
        )
    assert_close(got, ref)


def test_asymmetric_padding_without_ceil_mode_matches_torch_after_f_pad() -> None:
    x = randn(5, 2, 3, 9, 8)
    pads = (0, 2, 1, 0)  # top, bottom, left, right
    widths = (1, 0, 0, 2)  # F.pad order: left, right, top, bottom
    ninf = F.pad(t(x), widths, value=-math.inf)
    zeros = F.pad(t(x), widths)
    assert_close(
        kernels.max_pool2d(x, Pool.of((3, 3), (2, 2), pads), False), F.max_pool2d(ninf, 3, 2)
    )
    assert_close(
        kernels.max_pool2d(x, Pool.of((3, 3), (2, 2), pads), True), F.max_pool2d(zeros, 3, 2)
    )
    assert_close(
        kernels.avg_pool2d(x, Pool.of((3, 3), (2, 2), pads), True), F.avg_pool2d(zeros, 3, 2)
    )


def test_ceil_mode_overhang_counts_neither_as_padding_nor_as_a_maximum() -> None:
    # A row of 6, kernel 3, stride 2, padding 1 left and right, ceil mode: span 6 + 2 - 3 = 5,
    # ceil(5 / 2) + 1 = 4 windows starting at columns -1, 1, 3 and 5. The last covers column 5,
    # the right padding (6) and the overhang (7).
    x = -np.arange(1, 7, dtype=np.float32).reshape(1, 1, 1, 6)  # -1 .. -6
    # count_include_pad: (0 - 1 - 2) / 3 = -1, -9 / 3 = -3, -15 / 3 = -5, (-6 + 0) / 2 = -3
    # (divisor min(5 + 3, 6 + 1) - 5 = 2: the padding counts, the overhang does not).
    include = kernels.avg_pool2d(x, Pool.of((1, 3), (1, 2), (0, 0, 1, 1), True), True)
    np.testing.assert_array_equal(include[0, 0, 0], [-1.0, -3.0, -5.0, -3.0])
    # Without: -3 / 2 = -1.5, -3, -5, -6 / 1 = -6.
    exclude = kernels.avg_pool2d(x, Pool.of((1, 3), (1, 2), (0, 0, 1, 1), True), False)
    np.testing.assert_array_equal(exclude[0, 0, 0], [-1.5, -3.0, -5.0, -6.0])
    for flag, got in ((True, include), (False, exclude)):
        ref = F.avg_pool2d(t(x), (1, 3), (1, 2), (0, 1), True, flag)
        np.testing.assert_array_equal(got, ref.numpy())
    # Max pool: -inf padding gives -1, -2, -4, -6; zero padding wins over negatives (0, -2, -4,
    # 0), but the overhang never does.
    ninf = kernels.max_pool2d(x, Pool.of((1, 3), (1, 2), (0, 0, 1, 1), True), False)
    np.testing.assert_array_equal(ninf[0, 0, 0], [-1.0, -2.0, -4.0, -6.0])
    zero = kernels.max_pool2d(x, Pool.of((1, 3), (1, 2), (0, 0, 1, 1), True), True)
    np.testing.assert_array_equal(zero[0, 0, 0], [0.0, -2.0, -4.0, 0.0])


def test_global_avg_pool_matches_adaptive_avg_pool() -> None:
    x = randn(0, 3, 5, 7, 6)
    assert_close(kernels.global_avg_pool(x), F.adaptive_avg_pool2d(t(x), 1))


@pytest.mark.parametrize(
    ("lo", "hi", "torch_op"),
    [
        (0.0, math.inf, torch.relu),
        (0.0, 6.0, F.relu6),
        (-1.5, 0.25, lambda v: torch.clamp(v, -1.5, 0.25)),
    ],
)
def test_apply_activation_matches_torch_and_keeps_nan(lo: float, hi: float, torch_op) -> None:
    x = randn(0, 4, 50) * 5
    x[0, :3] = [np.nan, np.inf, -np.inf]
    got = kernels.apply_activation(x, lo, hi)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, torch_op(t(x)).numpy())
