"""Calibration: run the float IR on sample batches and record each activation's range in the IR.

`calibrate(module, data, method)` runs `@forward` on the reference interpreter and attaches a
`#qnn.calib<...>` to every `qnn` op's result (attribute `calib`) and to the input (argument
attribute `qnn.calib`), one [lo, hi] per activation bit width, so `quantize` runs from text.

Methods (per tensor):
- `minmax`: the observed min and max;
- `percentile`: clip |x| at the given percentile (99.99 by default);
- `mse`: the clip c that minimizes the expected squared error of quantizing to b bits, found
  on a histogram of |x|: rounding noise (c / qmax)^2 / 12 inside, (|x| - c)^2 outside, and
  none for exact zeros (on the grid at every clip; often half of a ReLU's outputs).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, StringAttr
from xdsl.dialects.func import FuncOp

from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.inputs import batches, model_sample_shape, replayable
from dopant.dialects.qnn import CalibrationAttr, QnnOp
from dopant.dialects.qnn.attrs import CALIBRATION_METHODS
from dopant.dialects.qnn.base import forward, is_float
from dopant.support.errors import InputError

ACT_BITS = (8, 4, 2)  # the activation widths quantize offers (BitFusion bricks)
HISTOGRAM_BINS = 2048  # over [0, max |x|]; TensorRT's entropy calibrator uses 2048 as well
INPUT = "<input>"
CALIBRATION_ATTR = "qnn.calibration"  # module attribute: the method and sample count used


@dataclass
class _Stats:
    """Running statistics of one activation over all calibration batches."""

    lo: float = math.inf
    hi: float = -math.inf
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))
    zeros: int = 0  # values exactly 0, also counted in the histogram's first bin

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    def observe_range(self, x: np.ndarray) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def observe_histogram(self, x: np.ndarray) -> None:
        top = self.absmax
        if top == 0.0:
            return
        counts, _ = np.histogram(np.abs(x), bins=HISTOGRAM_BINS, range=(0.0, top))
        self.histogram += counts
        self.zeros += int(np.count_nonzero(x == 0))


def _levels(bits: int, signed: bool) -> int:
    """Positive quantization levels: qmax of a symmetric signed or an unsigned grid."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def percentile_clip(stats: _Stats, percentile: float) -> float:
    """The |x| below which `percentile` % of the values fall (upper edge of that bin)."""
    total = stats.histogram.sum()
    if total == 0:
        return stats.absmax
    cumulative = np.cumsum(stats.histogram) / total
    index = int(np.searchsorted(cumulative, percentile / 100.0))
    edges = np.linspace(0.0, stats.absmax, HISTOGRAM_BINS + 1)
    return float(edges[min(index + 1, HISTOGRAM_BINS)])


def mse_clip(stats: _Stats, bits: int) -> float:
    """The clip c minimizing sum over bins of count * error(|x|, c) for a `bits` grid."""
    total = stats.histogram.sum()
    if total == 0:
        return stats.absmax
    centers = (np.arange(HISTOGRAM_BINS) + 0.5) * (stats.absmax / HISTOGRAM_BINS)
    counts = stats.histogram.astype(np.float64)
    counts[0] -= stats.zeros  # zero point 0 puts exact zeros on the grid: no error at any clip
    levels = _levels(bits, signed=stats.lo < 0)
    # Candidate clips: the upper edges of the top 90% of bins (a clip below 10% of the max
    # is never optimal for >= 2 bits on real activations, and keeps the search to ~1.8k steps).
    candidates = centers[HISTOGRAM_BINS // 10 :] + 0.5 * (stats.absmax / HISTOGRAM_BINS)
    inside = centers[None, :] <= candidates[:, None]
    noise = (candidates / levels) ** 2 / 12.0
    clipped = np.maximum(centers[None, :] - candidates[:, None], 0.0) ** 2
    errors = np.where(inside, noise[:, None], clipped) @ counts
    return float(candidates[int(np.argmin(errors))])


def _ranges(stats: _Stats, method: str, percentile: float) -> dict[int, tuple[float, float]]:
    """[lo, hi] per bit width: the observed range, clipped symmetrically at c."""
    out = {}
    for bits in ACT_BITS:
        if method == "minmax":
            clip = stats.absmax
        elif method == "percentile":
            clip = percentile_clip(stats, percentile)
        else:
            clip = mse_clip(stats, bits)
        out[bits] = (max(stats.lo, -clip), min(stats.hi, clip))
    return out


def _op_keys(module: ModuleOp) -> list[tuple[str, QnnOp]]:
    """(trace key, op) for every qnn op, named as `reference.trace` names their values."""
    seen: Counter[str] = Counter()
    keys = []
    for op in module.walk():
        if isinstance(op, QnnOp):
            path = op.path.data
            keys.append((path if not seen[path] else f"{path}#{seen[path]}", op))
            seen[path] += 1
    return keys


def calibrate(
    module: ModuleOp,
    data: Any,
    method: str = "minmax",
    *,
    percentile: float = 99.99,
    batch_size: int = 256,
    progress: bool = False,
) -> ModuleOp:
    """Record the activation ranges `method` finds on `data` in `module`, in place.

    `data` is a numpy array (or torch tensor) of samples shaped like the model's input, or any
    iterable of batches (a torch DataLoader, a list): arrays, tensors or (x, y, ...) tuples,
    whose labels are ignored (`dopant.compiler.inputs.batches`). The ranges do not depend on
    how the samples are batched. `progress` draws a bar on a terminal.

    Raises InputError for an unknown method, data of the wrong shape or type (naming the
    batch), a model with several inputs, or an integer (already quantized) module.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration method '{method}' is not known; use one of "
            f"{', '.join(CALIBRATION_METHODS)}."
        )
    if not 50.0 < percentile <= 100.0:
        raise InputError(f"the percentile must lie in (50, 100], got {percentile}.")
    sample = model_sample_shape(module, "to calibrate")
    integer = [
        op.where for op in module.walk() if isinstance(op, QnnOp) and not is_float(op.results[0])
    ]
    if integer:
        raise InputError(f"calibrate runs on float IR, but {integer[0]} is already integer.")
    keys = _op_keys(module)
    stats = {key: _Stats() for key, _ in [(INPUT, None), *keys]}
    passes = ["range"] if method == "minmax" else ["range", "histogram"]
    data = replayable(data) if len(passes) > 1 else data  # a generator is read twice
    runner = BatchedRunner(module, batch_size)
    count = 0
    for kind in passes:
        count = 0
        what = "calibrating" if len(passes) == 1 else f"calibrating ({kind})"
        for batch in batches(data, sample, size=batch_size, show=progress, bar=what):
            count += len(batch.x)
            values = {INPUT: batch.x, **runner.trace(batch.x)}
            for key, value in values.items():
                target = stats[key]
                (target.observe_range if kind == "range" else target.observe_histogram)(value)
    for key, op in keys:
        op.attributes["calib"] = CalibrationAttr.get(
            method, _ranges(stats[key], method, percentile)
        )
    fn = forward(module, "to calibrate")
    calib = CalibrationAttr.get(method, _ranges(stats[INPUT], method, percentile))
    fn.arg_attrs = _with_arg_calib(fn, calib)
    module.attributes[CALIBRATION_ATTR] = StringAttr(f"{method} on {count} samples")
    return module


def _with_arg_calib(fn: FuncOp, calib: CalibrationAttr) -> ArrayAttr[DictionaryAttr]:
    old = fn.arg_attrs.data[0].data if fn.arg_attrs is not None else {}
    return ArrayAttr([DictionaryAttr({**old, "qnn.calib": calib})])
