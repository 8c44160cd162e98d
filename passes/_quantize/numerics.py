"""The numbers `quantize` chooses: activation scales from calibrated ranges, symmetric weights
per output channel (optionally MSE-clipped), and int32 biases at the accumulator's scale.

A near-dead channel (weights ~1e-9 after folding a batch norm whose running variance is 0, or a
collapsed filter, next to a bias ~1) would get a weight scale so small that its bias overflows
int32 at S_x * S_w. Its weight scale is widened instead until the bias fits, as TFLite's
quantizer does (see `bias_scale_floor`); `widening_note` says which channels moved."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dopant.dialects.qnn import QuantParamsAttr
from dopant.support.errors import DopantError

INT32_MAX = (1 << 31) - 1
WEIGHT_CLIPS = ("minmax", "mse")


def activation_params(lo: float, hi: float, bits: int) -> QuantParamsAttr:
    """Per-tensor parameters with zero point 0 for real values in [lo, hi].

    Unsigned when lo >= 0 (after a ReLU): scale = hi / (2^b - 1); otherwise symmetric signed:
    scale = max(|lo|, |hi|) / (2^(b-1) - 1). A zero point of 0 keeps every integer op free of
    zero-point corrections (zero padding stays exact); an all-zero range gets scale 1.
    """
    signed = lo < 0.0
    levels = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    top = max(abs(lo), abs(hi))
    scale = top / levels if top > 0.0 else 1.0
    return QuantParamsAttr.get([scale], [0], bits, signed)


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer weights q (int64) and one scale per output channel: W ~ q * scale. `unwidened`
    holds the scales the weights alone asked for, before any widening for the bias."""

    values: np.ndarray
    scales: np.ndarray
    unwidened: np.ndarray

    def params(self, bits: int, per_channel: bool) -> QuantParamsAttr:
        if per_channel:
            return QuantParamsAttr.get(self.scales.tolist(), [0] * len(self.scales), bits, True, 0)
        return QuantParamsAttr.get([float(self.scales[0])], [0], bits, True)


def _grid(w: np.ndarray, clip: np.ndarray, levels: int) -> np.ndarray:
    """w rounded (half to even) onto the symmetric grid clip / levels * {-levels..levels}."""
    scale = np.where(clip > 0, clip / levels, 1.0)
    return np.clip(np.rint(w / scale[:, None]), -levels, levels) * scale[:, None]


def _mse_clips(rows: np.ndarray, levels: int) -> np.ndarray:
    """Per row, the clip in [0.3, 1] x max |w| minimizing the squared rounding error (a grid
    search of 71 steps; for 8 bits it settles at the max, for 2 bits well below it)."""
    top = np.abs(rows).max(axis=1)
    best, best_error = top.copy(), np.full(len(rows), np.inf)
    for fraction in np.linspace(0.3, 1.0, 71):
        clip = top * fraction
        error = ((rows - _grid(rows, clip, levels)) ** 2).sum(axis=1)
        better = error < best_error
        best[better], best_error[better] = clip[better], error[better]
    return best


def quantize_weight(
    w: np.ndarray,
    bits: int,
    per_channel: bool,
    clip: str,
    floor: np.ndarray | None = None,
) -> QuantizedWeight:
    """Symmetric quantization of a weight tensor [out, ...] to `bits` (levels +-(2^(b-1) - 1),
    so the grid is symmetric and -2^(b-1) is never used; 2 bits is ternary).

    `floor` (one scale per output channel, from `bias_scale_floor`) bounds each scale from
    below; per tensor, the one scale is at least the largest floor. A scale raised to its floor
    only coarsens that channel's grid: its weights round to fewer levels (to 0 when dead)."""
    levels = (1 << (bits - 1)) - 1
    rows = (w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)).astype(np.float64)
    clips = _mse_clips(rows, levels) if clip == "mse" else np.abs(rows).max(axis=1)
    natural = np.where(clips > 0, clips / levels, 1.0)
    scales = natural
    if floor is not None:
        scales = np.maximum(natural, floor if per_channel else floor.max(initial=0.0))
    q = np.clip(np.rint(rows / scales[:, None]), -levels, levels).astype(np.int64)

    def per_output(row_scales: np.ndarray) -> np.ndarray:
        return row_scales if per_channel else np.full(w.shape[0], row_scales[0])

    return QuantizedWeight(q.reshape(w.shape), per_output(scales), per_output(natural))


def bias_limit(depth: int, act_peak: int, weight_bits: int) -> int:
    """The largest |integer bias| of a layer: int32 less the worst case of its products.

    The accumulator is acc = bias + sum q_x q_w over `depth` products, and the simulator
    refuses any partial sum outside int32 (runtime.semantics.conv checks every tile), so the
    bias leaves room for |sum q_x q_w| <= depth * max|q_x| * (2^(b-1) - 1). A layer deep enough
    for that bound to pass 2^30 still keeps half of int32 for its bias (its products alone could
    overflow; the reference and the simulator check those at run time, as before).
    Example: a 3x3 conv over 64 channels of unsigned 8-bit input with 8-bit weights:
    576 * 255 * 127 = 18_653_760, so the limit is 2_147_483_647 - 18_653_760 = 2_128_829_887.
    """
    products = depth * act_peak * ((1 << (weight_bits - 1)) - 1)
    return INT32_MAX - min(products, 1 << 30)


def _bias_ints(magnitude: np.ndarray, input_scale: float, scale: np.ndarray) -> np.ndarray:
    """round(|b| / (S_x * S_w)) per channel, as `quantize_bias` computes it (0 where S_w = 0)."""
    acc = input_scale * scale
    return np.rint(np.divide(magnitude, acc, out=np.zeros_like(magnitude), where=acc > 0))


def bias_scale_floor(bias: np.ndarray, input_scale: float, limit: int) -> np.ndarray:
    """Per output channel, the smallest weight scale S_w with |round(b / (S_x S_w))| <= limit.

    TFLite's post-training quantizer handles near-dead channels the same way
    (`AdjustWeightsForBiasScale`, tensorflow/lite/tools/optimize/quantization_utils.cc): when
    |b| >= S_x S_w (2^31 - 1) / 2 it raises that channel's S_w (per tensor: the layer's, for
    the largest |b|) to 2 |b| / (S_x (2^31 - 1)), so the bias sits in the middle half of int32
    and the products keep the other half. Here the room the products need is `bias_limit`'s
    exact bound instead (never more than half), and S_w is the smallest that fits it: the
    start |b| / (S_x (limit + 1/2)) is the bound of what rounds to `limit`, nudged up one ulp
    at a time while float rounding still leaves it past the limit (a step or two).
    Example: b = 1, S_x = 0.02, limit = 2^31 - 1 - 2^20 gives S_w = 1 / (0.02 * 2146435071.5)
    ~ 2.33e-8; a channel whose own scale max|w| / 127 is larger keeps it, so only channels
    that would overflow change."""
    magnitude = np.abs(bias.astype(np.float64))
    floor = magnitude / (input_scale * (limit + 0.5))
    for _ in range(64):
        over = _bias_ints(magnitude, input_scale, floor) > limit
        if not over.any():
            return floor
        floor = np.where(over, np.nextafter(floor, np.inf), floor)
    raise AssertionError("the bias scale floor did not converge")  # each step moves one ulp


def quantize_bias(
    bias: np.ndarray, accumulator_scales: np.ndarray, limit: int, where: str
) -> np.ndarray:
    """b as int32 at the accumulator's scale S_x * S_w (Jacob et al. 2018, eq. 6), within
    +-`limit` (`bias_limit`). Weight scales at or above `bias_scale_floor` always fit."""
    q = np.rint(bias.astype(np.float64) / accumulator_scales)
    if np.abs(q).max(initial=0) > limit:
        raise DopantError(
            f"{where}: the bias does not fit +-{limit} at the accumulator scale although "
            "the weight scales were widened for it; this is a bug in quantize, please report it."
        )
    return q.astype(np.int64)
