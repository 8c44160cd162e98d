"""Q_b for the sensitivity: dopant's own weight and activation quantizers, dequantized to float64
so that their error can be measured or fed back into a float model."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from dopant.passes._quantize.numerics import activation_params, quantize_weight
from dopant.runtime import intops


def dequantized_weight(w: Tensor, bits: int, per_channel: bool = True) -> np.ndarray:
    """Q_b(W) in float64: `quantize_weight`'s integers times their scales (min/max clipping)."""
    array = w.detach().cpu().double().numpy()
    quantized = quantize_weight(array, bits, per_channel, "minmax")
    return quantized.values * quantized.scales.reshape(-1, *([1] * (array.ndim - 1)))


def weight_error(w: Tensor, bits: int, per_channel: bool = True) -> float:
    """‖Q_b(W) − W‖² in float64."""
    return float(
        ((dequantized_weight(w, bits, per_channel) - w.detach().cpu().double().numpy()) ** 2).sum()
    )


def dequantized_activation(x: Tensor, lo: float, hi: float, bits: int) -> np.ndarray:
    """Q_b(x) in float64 for a tensor calibrated to [lo, hi]: `activation_params` and
    `intops.quantize` (round half to even, clamp to the storage range), times the scale."""
    params = activation_params(lo, hi, bits)
    scale = params.scales[0]
    q = intops.quantize(x.detach().cpu().double().numpy(), scale, 0, params.qmin, params.qmax)
    return q * scale
