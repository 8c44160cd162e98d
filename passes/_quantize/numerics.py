"""The numbers `quantize` chooses: activation scales from calibrated ranges, symmetric weights
per output channel (optionally MSE-clipped), and int32 biases at the accumulator's scale."""

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
    """Integer weights q (int64) and one scale per output channel: W ~ q * scale."""

    values: np.ndarray
    scales: np.ndarray

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


def quantize_weight(w: np.ndarray, bits: int, per_channel: bool, clip: str) -> QuantizedWeight:
    """Symmetric quantization of a weight tensor [out, ...] to `bits` (levels +-(2^(b-1) - 1),
    so the grid is symmetric and -2^(b-1) is never used; 2 bits is ternary)."""
    levels = (1 << (bits - 1)) - 1
    rows = (w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)).astype(np.float64)
    clips = _mse_clips(rows, levels) if clip == "mse" else np.abs(rows).max(axis=1)
    scales = np.where(clips > 0, clips / levels, 1.0)
    q = np.clip(np.rint(rows / scales[:, None]), -levels, levels).astype(np.int64)
    out_scales = scales if per_channel else np.full(w.shape[0], scales[0])
    return QuantizedWeight(q.reshape(w.shape), out_scales)


def quantize_bias(bias: np.ndarray, accumulator_scales: np.ndarray, where: str) -> np.ndarray:
    """b as int32 at the accumulator's scale S_x * S_w (Jacob et al. 2018, eq. 6)."""
    q = np.rint(bias.astype(np.float64) / accumulator_scales)
    if np.abs(q).max(initial=0) > INT32_MAX:
        raise DopantError(
            f"{where}: the bias does not fit int32 at the accumulator scale; the input or "
            "weight scale is too small (check the calibration range)."
        )
    return q.astype(np.int64)
