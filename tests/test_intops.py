"""Integer requantization arithmetic: hand-computed gemmlowp/TFLite cases, exact big-integer
references on random data, and requantize against float64 within one step."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dopant.runtime import intops
from dopant.runtime.intops import INT32_MAX, INT32_MIN

I32 = st.integers(INT32_MIN, INT32_MAX)
MANY = settings(max_examples=300)


def test_srdhm_hand_computed_cases() -> None:
    srdhm = intops.saturating_rounding_doubling_high_mul
    # INT32_MIN * INT32_MIN / 2^31 = 2^31 does not fit int32: saturates.
    assert srdhm(INT32_MIN, INT32_MIN) == INT32_MAX
    # -2^31 * (2^31 - 1) / 2^31 = -(2^31 - 1) exactly.
    assert srdhm(INT32_MIN, INT32_MAX) == -INT32_MAX
    # 5 * 2^30 / 2^31 = 2.5: (5 * 2^30 + 2^30) / 2^31 = 3.
    assert srdhm(5, 1 << 30) == 3
    # -2.5: (-5 * 2^30 + 1 - 2^30) / 2^31 = -2.99999... truncates to -2 (ties toward +inf).
    assert srdhm(-5, 1 << 30) == -2
    # -3 * 2^30 / 2^31 = -1.5 -> -1; 3 * 2^30 / 2^31 = 1.5 -> 2.
    assert srdhm(-3, 1 << 30) == -1
    assert srdhm(3, 1 << 30) == 2
    # 100 * 1288490189 / 2^31 = 60.0000000093 -> 60 (M0 of 0.3: 100 * 0.3 = 30 after the shift).
    assert srdhm(100, 1288490189) == 60


@MANY
@given(a=I32, b=I32)
def test_srdhm_is_a_product_rounded_half_up(a: int, b: int) -> None:
    # Exact Python integers: (ab + nudge) / 2^31 truncated toward zero equals
    # floor((ab + 2^30) / 2^31) for both signs of ab (the nudge 1 - 2^30 with truncation toward
    # zero is a floor with +2^30 for negative products), except the saturating case.
    expected = INT32_MAX if a == b == INT32_MIN else (a * b + (1 << 30)) // (1 << 31)
    assert intops.saturating_rounding_doubling_high_mul(a, b) == expected


def test_rounding_divide_by_pot_hand_computed_cases() -> None:
    rdbpot = intops.rounding_divide_by_pot
    # Exponent 1: -5 / 2 = -2.5 -> -3, 5 / 2 = 2.5 -> 3, -4 / 2 = -2 exactly.
    assert rdbpot(-5, 1) == -3
    assert rdbpot(5, 1) == 3
    assert rdbpot(-4, 1) == -2
    # -6 / 4 = -1.5 -> -2; -5 / 4 = -1.25 -> -1; 6 / 4 = 1.5 -> 2; exponent 0 is the identity.
    assert rdbpot(-6, 2) == -2
    assert rdbpot(-5, 2) == -1
    assert rdbpot(6, 2) == 2
    assert rdbpot(-7, 0) == -7
    # Vectorized over per-channel exponents.
    assert rdbpot([-5, 5, 6], [1, 1, 2]).tolist() == [-3, 3, 2]


@MANY
@given(x=I32, exponent=st.integers(0, 31))
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x: int, exponent: int) -> None:
    magnitude = (2 * abs(x) + (1 << exponent)) // (1 << (exponent + 1))  # floor(|x|/2^e + 1/2)
    assert intops.rounding_divide_by_pot(x, exponent) == math.copysign(magnitude, x)


@pytest.mark.parametrize(
    ("real", "expected"),
    [
        (0.5, (1 << 30, 0)),  # 0.5 = 2^30 * 2^(0 - 31)
        (1.0, (1 << 30, 1)),  # frexp(1) = (0.5, 1)
        (2.0, (1 << 30, 2)),
        (1 / 3, (1431655765, -1)),  # frexp = (0.666..., -1); 0.666... * 2^31 = 1431655765.33
        (0.3, (1288490189, -1)),  # 0.6 * 2^31 = 1288490188.8 rounds up
        (1 - 2.0**-40, (1 << 30, 1)),  # fraction * 2^31 rounds to 2^31: halve, shift + 1
        (0.0, (0, 0)),
        (2.0**-40, (0, 0)),  # shift -39 < -31: every product would round to zero
        (2.0**31, (INT32_MAX, 30)),  # shift 32 > 30: saturates as TFLite does
    ],
)
def test_quantize_multiplier_hand_computed_cases(real: float, expected: tuple[int, int]) -> None:
    assert intops.quantize_multiplier(real) == expected


@MANY
@given(real=st.floats(2.0**-30, 2.0**29))
def test_quantize_multiplier_is_a_normalized_q31_within_half_a_step(real: float) -> None:
    m0, shift = intops.quantize_multiplier(real)
    assert (1 << 30) <= m0 < (1 << 31)
    # M0 = round(real * 2^(31 - shift)): off by at most half a unit of M0.
    assert abs(m0 * 2.0 ** (shift - 31) - real) <= 2.0 ** (shift - 32)


def test_quantize_multipliers_vectorized_matches_scalar() -> None:
    reals = np.array([0.5, 1 / 3, 2.0, 0.0, 0.0123])
    m0, shift = intops.quantize_multipliers(reals)
    assert list(zip(m0.tolist(), shift.tolist(), strict=True)) == [
        intops.quantize_multiplier(float(r)) for r in reals
    ]


def test_quantize_multiplier_rejects_negative_and_non_finite() -> None:
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and non-negative"):
            intops.quantize_multiplier(bad)


def _gemmlowp_scalar(x: int, m0: int, shift: int) -> int:
    """TFLite's reference MultiplyByQuantizedMultiplier, scalar, on Python integers."""
    shifted = max(INT32_MIN, min(INT32_MAX, x * (1 << max(shift, 0))))
    high = (shifted * m0 + (1 << 30)) >> 31  # m0 >= 0, so INT32_MIN^2 cannot occur
    right = max(-shift, 0)
    rounded = (2 * abs(high) + (1 << right)) >> (right + 1)  # floor(|high| / 2^right + 1/2)
    return -rounded if high < 0 else rounded


def test_multiply_by_quantized_multiplier_double_and_single_rounding_differ() -> None:
    mbqm = intops.multiply_by_quantized_multiplier
    # M = 0.25 = 2^30 * 2^(-1 - 31). x = 5 is exactly 1.25.
    # gemmlowp: SRDHM(5, 2^30) = 2.5 -> 3, then RoundingDivideByPOT(3, 1) = 1.5 -> 2.
    # single: (5 * 2^30 + 2^31) >> 32 = floor(1.75) = 1.
    assert mbqm(5, 1 << 30, -1, "gemmlowp") == 2
    assert mbqm(5, 1 << 30, -1, "single") == 1
    # x = -6 is -1.5: gemmlowp SRDHM -3, then -1.5 -> -2 (away from zero); single
    # (-6 * 2^30 + 2^31) >> 32 = floor(-1.0) = -1 (ties toward +inf).
    assert mbqm(-6, 1 << 30, -1, "gemmlowp") == -2
    assert mbqm(-6, 1 << 30, -1, "single") == -1
    # Left shift 2 of 2^30 saturates to 2^31 - 1 before SRDHM: (2^31 - 1) * 2^30 / 2^31 =
    # 2^30 - 0.5 -> 2^30. Single rounding keeps 64 bits: 2^60 >> 29 = 2^31, saturated to int32.
    assert mbqm(1 << 30, 1 << 30, 2, "gemmlowp") == 1 << 30
    assert mbqm(1 << 30, 1 << 30, 2, "single") == INT32_MAX


@MANY
@given(x=I32, real=st.floats(2.0**-31, 2.0**10), rounding=st.sampled_from(intops.ROUNDINGS))
def test_multiply_by_quantized_multiplier_matches_big_integer_references(
    x: int, real: float, rounding: str
) -> None:
    m0, shift = intops.quantize_multiplier(real)
    got = int(intops.multiply_by_quantized_multiplier(x, m0, shift, rounding))
    if rounding == "single":
        total = 31 - shift
        expected = (x * m0 + (1 << (total - 1))) >> total
        expected = max(INT32_MIN, min(INT32_MAX, expected))
    else:
        expected = _gemmlowp_scalar(x, m0, shift)
    assert got == expected
    exact = x * m0 * 2.0 ** (shift - 31)
    if INT32_MIN < exact < INT32_MAX and shift <= 0:
        assert abs(got - exact) <= 1.0


def test_multiply_by_quantized_multiplier_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"shift must lie in \[-31, 30\]"):
        intops.multiply_by_quantized_multiplier(1, 1 << 30, 31)
    with pytest.raises(ValueError, match="m0 must lie in"):
        intops.multiply_by_quantized_multiplier(1, -1, 0)
    with pytest.raises(ValueError, match="x must lie in"):
        intops.multiply_by_quantized_multiplier(1 << 31, 1 << 30, 0)
    with pytest.raises(TypeError, match="x must hold integers"):
        intops.multiply_by_quantized_multiplier(np.array([1.5]), 1 << 30, 0)
    with pytest.raises(ValueError, match="rounding 'nearest' is not known"):
        intops.multiply_by_quantized_multiplier(1, 1 << 30, 0, "nearest")


def test_requantize_hand_computed_example() -> None:
    # q = 100, zp_in = 0, M = 0.3 -> (1288490189, -1): SRDHM = 60 (see above), then
    # RoundingDivideByPOT(60, 1) = 30; + zp_out (-128) = -98.
    # q = -1000: SRDHM(-1000, 1288490189) = -600 (exactly -600.0000001 -> -600), / 2 = -300,
    # - 128 = -428, clamped to qmin = -128.
    m0, shift = intops.quantize_multiplier(0.3)
    got = intops.requantize(np.array([100, -1000]), 0, -128, m0, shift, -128, 127)
    assert got.tolist() == [-98, -128]


@pytest.mark.parametrize("rounding", intops.ROUNDINGS)
def test_requantize_per_channel_is_within_one_step_of_float64(rounding: str) -> None:
    rng = np.random.default_rng(3)
    acc = rng.integers(-(1 << 20), 1 << 20, size=(4, 8, 5, 5))
    zp_in = rng.integers(-50, 50, size=8)
    scale_in = rng.uniform(1e-5, 1e-3, size=8)
    scale_out = 0.02
    zp_out = 7
    m0, shift = intops.quantize_multipliers(scale_in / scale_out)
    got = intops.requantize(acc, zp_in, zp_out, m0, shift, -128, 127, rounding, axis=1)
    real = (acc - zp_in.reshape(1, 8, 1, 1)) * (scale_in / scale_out).reshape(1, 8, 1, 1)
    expected = np.clip(np.round(real) + zp_out, -128, 127)
    assert got.dtype == np.int64
    assert np.abs(got - expected).max() <= 1
    # Both saturation ends are reached on this data.
    assert got.min() == -128 and got.max() == 127


def test_requantize_saturates_at_qmin_and_qmax() -> None:
    m0, shift = intops.quantize_multiplier(1.0)
    got = intops.requantize(np.array([-(1 << 31), -9, 0, 9, INT32_MAX]), 0, 0, m0, shift, -8, 7)
    assert got.tolist() == [-8, -8, 0, 7, 7]
    # q - zp_in = 2^31 + 4 saturates to the accumulator range, 2^31 - 1. M = 1.0 is
    # (2^30, shift 1): gemmlowp shifts left first, saturating again, then SRDHM halves:
    # (2^31 - 1) * 2^30 / 2^31 = 2^30 - 0.5 -> 2^30. Single rounding keeps 64 bits:
    # ((2^31 - 1) * 2^30 + 2^29) >> 30 = 2^31 - 1.
    q = np.array([INT32_MAX])
    assert intops.requantize(q, -5, 0, m0, shift, INT32_MIN, INT32_MAX).tolist() == [1 << 30]
    single = intops.requantize(q, -5, 0, m0, shift, INT32_MIN, INT32_MAX, "single")
    assert single.tolist() == [INT32_MAX]


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([1.25, 1.75, -1.25, -0.25, 100.0, -np.inf, np.inf])
    # x / 0.5 = 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, -0.5 -> -0; + zp 3, clamped to [0, 15].
    assert intops.quantize(x, 0.5, 3, 0, 15).tolist() == [5, 7, 1, 3, 15, 0, 15]
    with pytest.raises(ValueError, match="cannot quantize NaN"):
        intops.quantize(np.array([np.nan]), 0.5, 0, 0, 15)


def test_quantize_and_dequantize_match_torch() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 9, 9)) * 4).astype(np.float32)
    scales, zps = np.array([0.1, 0.0173, 1 / 3]), np.array([0, 5, -3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch deprecates quantized tensors
        per_tensor = torch.quantize_per_tensor(torch.from_numpy(x), 0.05, 3, torch.qint8)
        per_channel = torch.quantize_per_channel(
            torch.from_numpy(x), torch.from_numpy(scales), torch.from_numpy(zps), 1, torch.qint8
        )
    q = intops.quantize(x, 0.05, 3, -128, 127)
    np.testing.assert_array_equal(q, per_tensor.int_repr().numpy())
    # dequantize rounds the float64 product once; torch multiplies in float32 (1 ulp apart).
    exact = ((q - 3) * 0.05).astype(np.float32)
    np.testing.assert_array_equal(intops.dequantize(q, 0.05, 3), exact)
    np.testing.assert_allclose(
        intops.dequantize(q, 0.05, 3), per_tensor.dequantize().numpy(), rtol=2e-7
    )
    qc = intops.quantize(x, scales, zps, -128, 127, axis=1)
    np.testing.assert_array_equal(qc, per_channel.int_repr().numpy())
    np.testing.assert_allclose(
        intops.dequantize(qc, scales, zps, axis=1), per_channel.dequantize().numpy(), rtol=1e-6
    )


def test_rounding_divide_rounds_half_away_from_zero() -> None:
    # TFLite AveragePool: 3 / 2 = 1.5 -> 2, -3 / 2 -> -2, 4 / 3 = 1.33 -> 1, 5 / 3 = 1.67 -> 2,
    # -5 / 3 -> -2, 0 / 7 -> 0.
    got = intops.rounding_divide([3, -3, 4, 5, -5, 0], [2, 2, 3, 3, 3, 7])
    assert got.tolist() == [2, -2, 1, 2, -2, 0]
    with pytest.raises(ValueError, match="divisor must lie in"):
        intops.rounding_divide(1, 0)


def test_activation_range_follows_tflite() -> None:
    # relu with zp -128: [max(-128, zp + round(0 / s)), 127] = [-128, 127].
    lo, hi = intops.activation_range(0.0, math.inf, 0.1, -128, -128, 127)
    assert (int(lo), int(hi)) == (-128, 127)
    # clamp(0, 6) at scale 0.05, zp 0: 6 / 0.05 = 120.
    lo, hi = intops.activation_range(0.0, 6.0, 0.05, 0, -128, 127)
    assert (int(lo), int(hi)) == (0, 120)
    # Per channel: zp 10, scale 0.1 and 0.04 for clamp(-1, 1): 10 -+ 10 and 10 -+ 25 -> [-15, 35].
    lo, hi = intops.activation_range(-1.0, 1.0, [0.1, 0.04], [10, 10], -128, 127)
    assert lo.tolist() == [0, -15] and hi.tolist() == [20, 35]
    # A bound outside the type is cut to it: 6 / 0.01 = 600 > 127.
    lo, hi = intops.activation_range(0.0, 6.0, 0.01, 0, -128, 127)
    assert (int(lo), int(hi)) == (0, 127)


@pytest.mark.parametrize("rounding", intops.ROUNDINGS)
def test_add_rescaled_subtracts_each_operands_own_zero_point(rounding: str) -> None:
    # lhs at S 0.5, zp 3; rhs at S 0.25, zp -5; out at S 0.5, zp 7. The multipliers S_x / S_out
    # are exactly 1.0 and 0.5, so (lhs - 3) * 2^20 + (rhs + 5) * 2^19 is exact and the sum is
    # rounded once, half away from zero: q = 7 + round((lhs - 3) + (rhs + 5) / 2).
    # (10, 4): 7 + 9 / 2 = 11.5 -> 12, + 7 = 19. (-2, -10): -5 - 5 / 2 = -7.5 -> -8, + 7 = -1.
    # (127, 127): 124 + 66 = 190, + 7 = 197 -> 127. (-128, -128): -131 - 61.5 -> -193 + 7 -> -128.
    # (3, -5): both operands at their zero points, so the output is at its own: 7.
    lhs = np.array([10, -2, 127, -128, 3])
    rhs = np.array([4, -10, 127, -128, -5])
    multipliers = intops.quantize_multiplier(1.0), intops.quantize_multiplier(0.5)
    got = intops.add_rescaled(lhs, rhs, (3, -5, 7), *multipliers, -128, 127, rounding)
    assert got.tolist() == [19, -1, 127, -128, 7]


def test_activation_range_rounds_ties_away_from_zero() -> None:
    # clamp(-0.5, 2.5) at scale 1, zp 4: the bounds are exact ties, -0.5 -> -1 and 2.5 -> 3
    # away from zero, so [4 - 1, 4 + 3] = [3, 7] (half to even gives [4, 6], half up [4, 7]).
    lo, hi = intops.activation_range(-0.5, 2.5, 1.0, 4, -128, 127)
    assert (int(lo), int(hi)) == (3, 7)
    # Per channel, clamp(-2.5, 4.5): at scale 1 -2.5 -> -3 and 4.5 -> 5 (half to even: -2, 4);
    # at scale 0.5 the bounds are exactly -5 and 9.
    lo, hi = intops.activation_range(-2.5, 4.5, [1.0, 0.5], [0, 0], -128, 127)
    assert lo.tolist() == [-3, -5] and hi.tolist() == [5, 9]
