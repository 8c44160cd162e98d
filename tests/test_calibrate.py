"""Calibration: recorded ranges against hand computation and brute force; bad data refused."""

from __future__ import annotations

import numpy as np
import pytest

from dopant.compiler.calibrate import _Stats, calibrate, mse_clip, percentile_clip
from dopant.compiler.irio import ir_text, parse_ir
from dopant.dialects.qnn import CalibrationAttr, ReluOp
from dopant.passes._quantize.plan import arg_calibration
from dopant.support.errors import InputError

NET = """
func.func @forward(%x: tensor<1x4xf32>) -> tensor<1x4xf32> {
  %r = qnn.relu %x at "relu" : tensor<1x4xf32>
  func.return %r : tensor<1x4xf32>
}
"""


def _relu_calib(module: object) -> CalibrationAttr:
    (op,) = [o for o in module.walk() if isinstance(o, ReluOp)]  # type: ignore[attr-defined]
    calib = op.attributes["calib"]
    assert isinstance(calib, CalibrationAttr)
    return calib


def test_minmax_records_the_observed_range_for_every_width() -> None:
    module = parse_ir(NET)
    data = np.array([[-3.0, 1.0, 2.0, 0.5], [0.0, -1.0, 5.0, 4.0]], np.float32)
    calibrate(module, data, "minmax", batch_size=1)  # two batches of one
    # relu(x) spans [0, 5]; the input spans [-3, 5].
    assert _relu_calib(module).ranges == {8: (0.0, 5.0), 4: (0.0, 5.0), 2: (0.0, 5.0)}
    calib = arg_calibration(_only_func(module))
    assert calib is not None and calib.ranges[8] == (-3.0, 5.0)
    # The ranges travel in the text.
    again = parse_ir(ir_text(module))
    assert _relu_calib(again) == _relu_calib(module)
    assert 'qnn.calibration = "minmax on 2 samples"' in ir_text(module)


def _only_func(module: object) -> object:
    from xdsl.dialects.func import FuncOp

    return next(o for o in module.walk() if isinstance(o, FuncOp))  # type: ignore[attr-defined]


def test_percentile_clips_outliers() -> None:
    module = parse_ir(NET)
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, size=(2000, 4)).astype(np.float32)
    data[0, 0] = 100.0  # one outlier in 8000 values
    calibrate(module, data, "percentile", percentile=99.9)
    lo, hi = _relu_calib(module).ranges[8]
    # 99.9% of |x| lie below ~0.999; the histogram's bins over [0, 100] are 100/2048 wide.
    assert lo >= 0.0 and 0.99 <= hi <= 1.0 + 100 / 2048


def test_mse_clip_matches_brute_force_on_a_gaussian() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    stats = _Stats()
    stats.observe_range(x)
    stats.observe_histogram(x)
    for bits in (2, 4, 8):
        clip = mse_clip(stats, bits)
        levels = (1 << (bits - 1)) - 1

        def error(c: float, levels: int = levels) -> float:
            s = c / levels
            return float(np.mean((x - np.clip(np.round(x / s), -levels, levels) * s) ** 2))

        brute = min(np.linspace(0.1, 1.0, 400) * np.abs(x).max(), key=error)
        # The histogram estimate is within 3% of the brute-force mean squared error.
        assert error(clip) <= 1.03 * error(brute)
    # Fewer bits clip harder: the known optimum for a unit Gaussian at 4 bits is ~2.5 sigma.
    assert mse_clip(stats, 2) < mse_clip(stats, 4) < mse_clip(stats, 8)
    assert 2.2 < mse_clip(stats, 4) < 2.9


def test_mse_clip_on_relu_outputs_is_the_brute_force_optimum_of_an_unsigned_grid() -> None:
    # relu of a unit Gaussian: half the values are exactly 0, the rest half-normal. Quantized
    # unsigned with zero point 0, a clip c gives 2^b - 1 steps of c / (2^b - 1) above 0.
    module = parse_ir(NET)
    data = np.random.default_rng(2).standard_normal((25_000, 4)).astype(np.float32)
    calibrate(module, data, "mse", batch_size=25_000)
    x = np.maximum(data.astype(np.float64), 0.0).ravel()
    grid = np.arange(0.5, 4.0, 0.01)  # the clips scanned
    for bits in (2, 4):
        levels = (1 << bits) - 1

        def error(clip: float, levels: int = levels) -> float:
            step = clip / levels
            return float(np.mean((x - np.clip(np.round(x / step), 0, levels) * step) ** 2))

        errors = [error(c) for c in grid]
        brute = grid[int(np.argmin(errors))]  # 1.95 at 2 bits, 2.93 at 4 bits
        lo, hi = _relu_calib(module).ranges[bits]
        # The histogram's clip is as good as the best one scanned, and as near it as the
        # flat bottom of the curve allows (3 grid steps at 4 bits, 1 at 2 bits).
        assert lo == 0.0 and error(hi) <= 1.002 * min(errors), (bits, hi, brute)
        assert abs(hi - brute) <= 0.05, (bits, hi, brute)


def test_percentile_of_an_empty_histogram_is_the_max() -> None:
    stats = _Stats()
    stats.observe_range(np.zeros(4))
    assert percentile_clip(stats, 99.0) == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            np.zeros((3, 1, 5), np.float32),
            "has shape [3, 1, 5], but the model takes samples of "
            "shape [4]; give an array of shape [N, 4]",
        ),
        (np.zeros((0, 4), np.float32), "holds no samples"),
        (np.array([["a", "b", "c", "d"]]), "has dtype <U1; expected real numbers"),
        (np.full((2, 4), np.nan, np.float32), "contains 8 NaN or infinite value(s)"),
    ],
)
def test_bad_calibration_data_is_refused(data: np.ndarray, message: str) -> None:
    with pytest.raises(InputError) as error:
        calibrate(parse_ir(NET), data)
    assert message in str(error.value)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(
        InputError, match="calibration method 'kl' is not known; use one of minmax, percentile, mse"
    ):
        calibrate(parse_ir(NET), np.zeros((1, 4), np.float32), "kl")
