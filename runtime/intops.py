"""Integer arithmetic of quantized inference: THE definition used by the reference and simulator.

A real value r and its integer q are related by r = scale * (q - zp) (Jacob et al., CVPR 2018).
Rescaling by a real multiplier M > 0 is done in integers only: M = M0 * 2^(shift - 31) with M0 an
int32 in [2^30, 2^31) (Q0.31 of a value in [0.5, 1)); positive shifts shift left (TFLite's
convention). Two roundings are defined, named in the IR (`qnn.requantize ... rounding`):

- "gemmlowp" (default; TFLite's reference `MultiplyByQuantizedMultiplier`): saturating left shift
  by max(shift, 0), gemmlowp `SaturatingRoundingDoublingHighMul` (rounds to nearest, ties toward
  +inf, INT32_MIN * INT32_MIN saturates), then gemmlowp `RoundingDivideByPOT` by max(-shift, 0)
  (ties away from zero). Rounding twice can differ from the exact product by one step.
- "single" (TFLite built with TFLITE_SINGLE_ROUNDING): one 64-bit product x * M0, then one
  rounding right shift by 31 - shift: add 2^(30 - shift) and shift arithmetically (ties toward
  +inf), saturated to int32.

Everything is vectorized numpy on int64 internally; per-channel parameters are 1-D arrays laid
along `axis` of the data (`axis=None` means one value for the whole tensor). Results are int64
arrays holding values of the stated range; callers cast them to storage types.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ROUNDINGS = ("gemmlowp", "single")
# Shifts the two roundings support: RoundingDivideByPOT takes exponents up to 31, and the single
# rounding shifts by 31 - shift in [1, 62].
MIN_SHIFT, MAX_SHIFT = -31, 30


def _ints(name: str, value: ArrayLike, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """`value` as int64, checked to be integers within [lo, hi]."""
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}.")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < lo or array.max() > hi):
        raise ValueError(
            f"{name} must lie in [{lo}, {hi}], got values in [{array.min()}, {array.max()}]."
        )
    return array


def along(values: ArrayLike, axis: int | None, ndim: int) -> np.ndarray:
    """Per-channel `values` shaped to broadcast along `axis` of an `ndim`-array (or a scalar)."""
    array = np.asarray(values)
    if axis is None:
        if array.size != 1:
            raise ValueError(f"per-tensor parameters need one value, got {array.size}.")
        return array.reshape(())
    if not 0 <= axis < ndim:
        raise ValueError(f"axis {axis} is outside the rank {ndim} of the data.")
    shape = [1] * ndim
    shape[axis] = -1
    return array.reshape(shape)


def quantize_multipliers(reals: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized `quantize_multiplier`: int64 arrays (m0, shift) of the shape of `reals`."""
    real = np.asarray(reals, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError("quantized multipliers must be finite and non-negative.")
    fraction, exponent = np.frexp(real)  # real = fraction * 2^exponent, fraction in [0.5, 1)
    # TfLiteRound: half away from zero; exact, since fraction * 2^31 has 22 fraction bits at most.
    m0 = np.floor(fraction * float(1 << 31) + 0.5).astype(np.int64)
    shift = exponent.astype(np.int64)
    carry = m0 == (1 << 31)  # fraction rounded up to 1.0: halve M0, one more shift
    m0 = np.where(carry, m0 // 2, m0)
    shift = np.where(carry, shift + 1, shift)
    tiny = (shift < MIN_SHIFT) | (m0 == 0)  # below 2^-32: every product rounds to 0
    huge = shift > MAX_SHIFT  # 2^30 and above: saturate as TFLite does
    m0 = np.where(tiny, 0, np.where(huge, INT32_MAX, m0))
    shift = np.where(tiny, 0, np.where(huge, MAX_SHIFT, shift))
    return m0, shift


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's `QuantizeMultiplier`: real M >= 0 as (M0, shift), M = M0 * 2^(shift - 31).

    M0 is in [2^30, 2^31) by frexp and rounding half away from zero; a M0 that rounds up to 2^31
    is halved with the shift incremented. M == 0 and M < 2^-32 (shift below -31) give (0, 0);
    M >= 2^30 saturates to (2^31 - 1, 30). Examples: 0.5 = 2^30 * 2^(0 - 31) -> (2^30, 0);
    2.0 -> (2^30, 2); 1/3 = 0.666... * 2^-1 -> (round(0.666... * 2^31), -1) = (1431655765, -1).
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"a quantized multiplier must be finite and non-negative, got {real}.")
    m0, shift = quantize_multipliers(real)
    return int(m0), int(shift)


def saturating_rounding_doubling_high_mul(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """gemmlowp `SaturatingRoundingDoublingHighMul`: round(a * b / 2^31) on int32 values.

    nudge = 2^30 if a * b >= 0 else 1 - 2^30; result = (a * b + nudge) / 2^31 truncated toward
    zero, so ties round toward +inf. a = b = INT32_MIN (2^62 / 2^31 = 2^31, not an int32)
    saturates to INT32_MAX. Example: a = 5, b = 2^30: (5 * 2^30 + 2^30) / 2^31 = 3 (2.5 -> 3);
    a = -5: (-5 * 2^30 + 1 - 2^30) / 2^31 = -2.9999... -> -2 (-2.5 -> -2).
    """
    return _high_mul(_ints("a", a), _ints("b", b))


def _high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SRDHM of int64 arrays already checked to hold int32 values, in four array passes.

    v has the sign of a * b, and truncating v toward zero is floor((v + 2^31 - 1) / 2^31) when
    v < 0, so both of gemmlowp's cases are floor((a * b + 2^30) / 2^31). Its only value past
    INT32_MAX is 2^31, from a = b = INT32_MIN (any other product is at most 2^62 - 2^31), so the
    saturation is a minimum.
    """
    return np.minimum((a * b + (1 << 30)) >> 31, INT32_MAX)


def rounding_divide_by_pot(x: ArrayLike, exponent: ArrayLike) -> np.ndarray:
    """gemmlowp `RoundingDivideByPOT`: x / 2^exponent rounded to nearest, ties away from zero.

    remainder = x & mask, threshold = (mask >> 1) + (x < 0), result = (x >> exponent) +
    (remainder > threshold), mask = 2^exponent - 1, exponent in [0, 31]. Examples with exponent 1:
    5 -> 2 + (1 > 0) = 3; -5 -> -3 + (1 > 1) = -3; -4 -> -2 + (0 > 1) = -2.
    """
    return _divide_by_pot(_ints("x", x), _ints("exponent", exponent, 0, 31))


def _divide_by_pot(x64: np.ndarray, e: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT of int64 arrays already checked (x int32, e in [0, 31]), in four
    array passes: (x + nudge) >> e, the nudge 2^(e-1) for x >= 0 and 2^(e-1) - 1 for x < 0 (0
    when e = 0). It carries into the shifted bits exactly when remainder > threshold, so it is
    gemmlowp's test moved inside the shift."""
    half = (np.int64(1) << e) >> 1
    return (x64 + np.where(x64 >= 0, half, np.maximum(half - 1, 0))) >> e


def multiply_by_quantized_multiplier(
    x: ArrayLike, m0: ArrayLike, shift: ArrayLike, rounding: str = "gemmlowp"
) -> np.ndarray:
    """TFLite's `MultiplyByQuantizedMultiplier`: x * M0 * 2^(shift - 31) rounded, as int32.

    "gemmlowp": RoundingDivideByPOT(SRDHM(sat32(x * 2^max(shift, 0)), M0), max(-shift, 0)).
    "single": (x * M0 + 2^(30 - shift)) >> (31 - shift) on 64 bits, saturated to int32.
    Example, M = 0.25 as (2^30, -1), x = 5 (exactly 1.25): gemmlowp rounds 2.5 -> 3, then
    3 / 2 = 1.5 -> 2; single rounds once: (5 * 2^30 + 2^31) >> 32 = floor(1.75) = 1.
    With shift > 0 gemmlowp saturates x * 2^shift to int32 before multiplying, so M >= 1 caps
    |result| near M0 (M = 1.0 is (2^30, 1): x = 2^31 - 1 gives 2^30), as TFLite does.
    """
    x64 = _ints("x", x)
    m = _ints("m0", m0, 0, INT32_MAX)
    s = _ints("shift", shift, MIN_SHIFT, MAX_SHIFT)
    if rounding == "gemmlowp":
        # Every intermediate is in range by construction: the unchecked steps follow.
        shifted = np.clip(x64 << np.maximum(s, 0), INT32_MIN, INT32_MAX)
        return _divide_by_pot(_high_mul(shifted, m), np.maximum(-s, 0))
    if rounding == "single":
        total = 31 - s  # in [1, 62]; |x * M0| < 2^62, so nothing below overflows int64
        result = (x64 * m + (np.int64(1) << (total - 1))) >> total
        return np.clip(result, INT32_MIN, INT32_MAX)
    raise ValueError(f"rounding '{rounding}' is not known; use one of {', '.join(ROUNDINGS)}.")


def requantize(
    q: ArrayLike,
    zp_in: ArrayLike,
    zp_out: ArrayLike,
    m0: ArrayLike,
    shift: ArrayLike,
    qmin: ArrayLike,
    qmax: ArrayLike,
    rounding: str = "gemmlowp",
    axis: int | None = None,
) -> np.ndarray:
    """q_out = clamp(zp_out + MultiplyByQuantizedMultiplier(q - zp_in, M0, shift), qmin, qmax).

    Every parameter is a scalar or a 1-D per-channel array along `axis` of `q`. q - zp_in
    saturates to int32 (the accumulator width) before the multiply. Example: q = 100, zp_in = 0,
    M = 0.3 -> (1288490189, -1): SRDHM gives round(60.0000000093) = 60, /2 -> 30; zp_out = -128
    gives -98. `qmin`/`qmax` clamp to the output type and a fused activation's range.
    """
    data = _ints("q", q, -(1 << 62), 1 << 62)

    def per(value: ArrayLike) -> np.ndarray:
        return along(value, axis, data.ndim)

    x = np.clip(data - per(_ints("zp_in", zp_in)), INT32_MIN, INT32_MAX)
    y = multiply_by_quantized_multiplier(x, per(m0), per(shift), rounding) + per(
        _ints("zp_out", zp_out)
    )
    return np.clip(y, per(_ints("qmin", qmin)), per(_ints("qmax", qmax)))


# Operands of an integer add are shifted left this many bits before rescaling, so each
# operand's rescale keeps 20 fractional bits and only the final sum is rounded (TFLite's int8
# ADD uses left_shift = 20: |q| < 2^8 leaves |q| * 2^20 < 2^28 inside int32).
ADD_LEFT_SHIFT = 20


def add_rescaled(
    lhs: ArrayLike,
    rhs: ArrayLike,
    zps: tuple[int, int, int],
    lhs_multiplier: tuple[ArrayLike, ArrayLike],
    rhs_multiplier: tuple[ArrayLike, ArrayLike],
    qmin: ArrayLike,
    qmax: ArrayLike,
    rounding: str = "gemmlowp",
) -> np.ndarray:
    """The integer residual add, rounded once:

        q = clamp(zp_out + RoundingDivideByPOT(rq(lhs') + rq(rhs'), 20), qmin, qmax)

    where x' = (x - zp_x) * 2^20 and rq multiplies by (M0, shift) = quantize_multiplier(S_x /
    S_out) with `rounding` (TFLite's int8 ADD). Operands must have at most 8 bits (plus sign).
    Example: lhs 10 at S 0.1, rhs 7 at S 0.2, out S 0.3: 10/3 + 14/3 = 8.0 -> 8 (rounding each
    operand first would give 3 + 5 or, with gemmlowp's double rounding, 4 + 5).
    """
    zp_lhs, zp_rhs, zp_out = zps
    limit = 1 << (31 - ADD_LEFT_SHIFT)  # keeps x * 2^20 inside int32
    a = _ints("lhs", lhs, -limit, limit - 1) - zp_lhs
    b = _ints("rhs", rhs, -limit, limit - 1) - zp_rhs
    wide = multiply_by_quantized_multiplier(
        a << ADD_LEFT_SHIFT, *lhs_multiplier, rounding
    ) + multiply_by_quantized_multiplier(b << ADD_LEFT_SHIFT, *rhs_multiplier, rounding)
    total = rounding_divide_by_pot(np.clip(wide, INT32_MIN, INT32_MAX), ADD_LEFT_SHIFT)
    return np.clip(total + zp_out, qmin, qmax)


def quantize(
    x: ArrayLike,
    scale: ArrayLike,
    zp: ArrayLike,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> np.ndarray:
    """q = clamp(round(x / scale) + zp, qmin, qmax), rounding half to even as torch's
    `quantize_per_tensor` (x / scale in float64); +-inf saturate, NaN is an error.
    Example: scale 0.5, zp 3: x = 1.25 -> round(2.5) = 2 -> 5; x = 1.75 -> round(3.5) = 4 -> 7.
    """
    real = np.asarray(x, dtype=np.float64)
    if np.isnan(real).any():
        raise ValueError("cannot quantize NaN values.")
    scaled = np.rint(real / along(np.asarray(scale, np.float64), axis, real.ndim))
    q = np.clip(scaled + along(_ints("zp", zp), axis, real.ndim), qmin, qmax)
    return q.astype(np.int64)


def dequantize(
    q: ArrayLike, scale: ArrayLike, zp: ArrayLike, axis: int | None = None
) -> np.ndarray:
    """x = scale * (q - zp), formed in float64 and rounded once to float32."""
    data = _ints("q", q, -(1 << 62), 1 << 62)
    s = along(np.asarray(scale, np.float64), axis, data.ndim)
    return ((data - along(_ints("zp", zp), axis, data.ndim)) * s).astype(np.float32)


def rounding_divide(x: ArrayLike, divisor: ArrayLike) -> np.ndarray:
    """x / divisor rounded to nearest, ties away from zero: TFLite's integer `AveragePool`
    (acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n, C division). Examples: 3 / 2 -> 2,
    -3 / 2 -> -2, 4 / 3 -> 1, 5 / 3 -> 2. `divisor` must be positive.
    """
    x64 = _ints("x", x, -(1 << 62), 1 << 62)
    d = _ints("divisor", divisor, 1, 1 << 62)
    magnitude = (np.abs(x64) + d // 2) // d
    return np.where(x64 < 0, -magnitude, magnitude)


def activation_range(
    lo: float,
    hi: float,
    scale: ArrayLike,
    zp: ArrayLike,
    qmin: int,
    qmax: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The integer range [q_lo, q_hi] of a fused activation clamping reals to [lo, hi].

    TFLite's `CalculateActivationRangeQuantized`: a finite bound f becomes zp + round(f / scale),
    rounding half away from zero, intersected with [qmin, qmax]; an infinite bound leaves the
    type's limit. Per-channel `scale`/`zp` give per-channel ranges. Example: relu with zp = -128
    gives [-128, qmax]; clamp(0, 6) at scale 0.05, zp 0 gives [0, 120].
    """
    s = np.asarray(scale, np.float64)
    z = _ints("zp", zp)

    def bound(f: float, limit: int) -> np.ndarray:
        if math.isinf(f):
            return np.broadcast_to(np.int64(limit), np.broadcast(s, z).shape).copy()
        t = f / s
        return z + (np.sign(t) * np.floor(np.abs(t) + 0.5)).astype(np.int64)

    q_lo = np.clip(bound(lo, qmin), qmin, qmax)
    q_hi = np.clip(bound(hi, qmax), qmin, qmax)
    return q_lo, q_hi
