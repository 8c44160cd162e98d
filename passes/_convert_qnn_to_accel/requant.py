"""The accelerator's requantization parameters, computed exactly as `runtime.reference` does.

A rescale by M = S_in / S_out is an int32 multiplier m0 and a shift (`intops.
quantize_multipliers`), the clamp is the output type's range narrowed by a fused activation
(`intops.activation_range`), and the rounding is the ISA's `rounding` field (the index in
`intops.ROUNDINGS`). store_acc reads m0[0..n) then shift[0..n) per output channel; vrequant
m0, shift; vadd m0 of a, m0 of b, shift of a, shift of b.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dopant.dialects.qnn import ActivationAttr, QuantParamsAttr, RequantizeOp
from dopant.runtime import intops
from dopant.support.errors import DopantError


@dataclass(frozen=True)
class Requant:
    """How the accelerator rescales: int32 multipliers (m0, shift per channel), the output
    clamp [lo, hi] (storage range narrowed by a fused activation) and the rounding field."""

    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    rounding: int

    @property
    def fields(self) -> tuple[int, int, int]:
        return self.lo, self.hi, self.rounding


def _scales(params: QuantParamsAttr, where: str) -> np.ndarray:
    if any(params.zero_points):
        raise DopantError(
            f"{where}: zero points must be 0 (the accelerator's instructions carry none), "
            f"got {params.zero_points[:4]}."
        )
    return np.asarray(params.scales, np.float64)


def requant(
    where: str,
    source: QuantParamsAttr,
    target: QuantParamsAttr,
    act: ActivationAttr | None,
    rounding: str,
) -> Requant:
    """Multipliers and clamp exactly as `runtime.reference` computes them: M = S_in / S_out
    per channel through `intops.quantize_multipliers`, the range by `intops.activation_range`."""
    if target.is_per_channel:
        raise DopantError(f"{where}: the result must be quantized per tensor.")
    out_scale = _scales(target, where)
    m0, shift = intops.quantize_multipliers(_scales(source, where) / out_scale)
    lo, hi = target.qmin, target.qmax
    if act is not None:
        q_lo, q_hi = intops.activation_range(*act.bounds, out_scale, 0, lo, hi)
        lo, hi = int(q_lo.reshape(-1)[0]), int(q_hi.reshape(-1)[0])
    return Requant(m0, shift, lo, hi, intops.ROUNDINGS.index(rounding))


def layer_requant(op: RequantizeOp, channels: int) -> Requant:
    """The requantize fused into a conv/linear, its multipliers one per output channel."""
    r = requant(op.where, op.in_params, op.out_params, op.act, op.rounding.data)
    m0 = np.broadcast_to(r.m0, (channels,))
    shift = np.broadcast_to(r.shift, (channels,))
    return Requant(m0, shift, r.lo, r.hi, r.rounding)
