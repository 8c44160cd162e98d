"""The main job on an embedded default: a ResNet-8 trained on Fashion-MNIST (shipped weights and
a shipped 1000-image test sample), imported, canonicalized, run on the reference interpreter
against torch, then calibrated, quantized to integers and evaluated again."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dopant.compiler.datasets import load_sample
from dopant.compiler.evaluate import BatchedRunner, accuracy
from dopant.compiler.frontend import import_model
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.pretrained import PRETRAINED, load_pretrained
from dopant.compiler.quantization import CANONICAL, quantize_network
from dopant.compiler.summary import format_table, op_rows
from dopant.dialects.errors import InputError

QUANTIZED: dict[str, dict[str, Any]] = {  # name -> quantize options
    "W8A8": {"weight_bits": 8, "act_bits": 8},
    "W4A8": {"weight_bits": 4, "act_bits": 8, "weight_clip": "mse"},
    "W4A4 (first/last 8)": {
        "weight_bits": 4,
        "act_bits": 4,
        "weight_clip": "mse",
        "first_last_bits": 8,
    },
}


def demo(model_ref: str = "zoo:resnet8") -> dict[str, float]:
    """Run the main job and return the top-1 accuracy of each variant on the test sample."""
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    with threadpool_limits(limits=1, user_api="blas"):
        return _demo(model_ref.removeprefix("zoo:"))


def _demo(name: str) -> dict[str, float]:
    if name not in PRETRAINED:
        raise InputError(
            f"the demo runs a trained model: zoo:{' or zoo:'.join(PRETRAINED)}, not zoo:{name}."
        )
    calibration, test = load_sample()
    model = load_pretrained(name)
    start = time.perf_counter()
    module = import_model(model, torch.from_numpy(test.x[:1]))
    report = run_pipeline(module, CANONICAL)
    print(
        f"zoo:{name} (trained on Fashion-MNIST): imported in "
        f"{time.perf_counter() - start:.2f} s; pipeline '{CANONICAL}':"
    )
    print(report.table(), end="\n\n")
    print(format_table(op_rows(module)), end="\n\n")

    start = time.perf_counter()
    logits = BatchedRunner(module).run(test.x)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        expected = model(torch.from_numpy(test.x)).numpy()
    error = float(np.abs(logits - expected).max() / np.abs(expected).max())
    results = {"float": float(np.mean(logits.argmax(1) == test.y))}
    print(
        f"reference interpreter on {len(test)} test images: {elapsed:.2f} s; max error against "
        f"torch {error:.1e} of the output scale\n"
    )

    for label, options in QUANTIZED.items():
        q = quantize_network(module, calibration.x, method="mse", **options)
        results[label] = accuracy(q, test.x, test.y)
    print(
        f"top-1 accuracy on the {len(test)}-image Fashion-MNIST test sample (calibrated on "
        f"{len(calibration)} training images, MSE clipping):"
    )
    for label, value in results.items():
        print(f"  {label:<22} {value:.2%}")
    return results
