"""One call from a float network to an integer one: canonicalize, calibrate, quantize.

q = quantize_network(module, calibration_images, method="mse", weight_bits=4)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.calibrate import calibrate
from dopant.compiler.pipeline import run_pipeline
from dopant.passes.quantize import QuantizePass
from dopant.support.errors import InputError

CANONICAL = "fold-batchnorm{strict=true},fuse-activation"


def quantize_network(
    module: ModuleOp,
    data: np.ndarray | None,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    **options: Any,
) -> ModuleOp:
    """A quantized copy of float `module`; `module` itself is left as it was.

    Batch norms are folded and activations fused first; with `data` the copy is calibrated on
    it (else it must carry calibration ranges already); `options` are QuantizePass's
    (`weight_bits`, `act_bits`, `per_channel`, `rounding`, `weight_clip`, `first_last_bits`,
    `output_bits`, `overrides`).
    """
    try:
        quantizer = QuantizePass(**options)  # bad option names fail before any work
    except TypeError:
        valid = ", ".join(f.name for f in dataclasses.fields(QuantizePass))
        raise InputError(
            f"unknown quantize option(s) {sorted(options)}; the options are {valid}."
        ) from None
    copy = module.clone()
    run_pipeline(copy, CANONICAL)
    if data is not None:
        calibrate(copy, data, method, percentile=percentile)
    run_pipeline(copy, [quantizer])
    return copy
