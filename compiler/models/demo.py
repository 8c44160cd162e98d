"""The main job on an embedded default: a ResNet-8 trained on Fashion-MNIST (shipped weights and
a shipped 1000-image test sample), imported, canonicalized, run on the reference interpreter
against torch, then calibrated, quantized to integers and evaluated again; finally the W8A8
network is compiled for the edge16 accelerator, the test sample runs on the simulator (checked
bit for bit against the integer reference) and the latency profile is printed."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.driver import CANONICAL_PIPELINE, compile_module, quantize_network
from dopant.compiler.evaluate import BatchedRunner, top1
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import PRETRAINED, load_pretrained
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import format_table, op_rows
from dopant.support.errors import InputError

TARGET = "edge16"  # the accelerator the demo compiles for (a preset of backend.presets)
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
    report = run_pipeline(module, CANONICAL_PIPELINE)
    print(
        f"zoo:{name} (trained on Fashion-MNIST): imported in "
        f"{time.perf_counter() - start:.2f} s; pipeline '{CANONICAL_PIPELINE}':"
    )
    print(report.table(), end="\n\n")
    print(format_table(op_rows(module)), end="\n\n")

    start = time.perf_counter()
    logits = BatchedRunner(module).run(test.x)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        expected = model(torch.from_numpy(test.x)).numpy()
    error = float(np.abs(logits - expected).max() / np.abs(expected).max())
    results = {"float": top1(logits, test.y)}
    print(
        f"reference interpreter on {len(test)} test images: {elapsed:.2f} s; max error against "
        f"torch {error:.1e} of the output scale\n"
    )

    networks, integer_logits = {}, {}
    for label, options in QUANTIZED.items():
        networks[label] = quantize_network(module, calibration.x, method="mse", **options)
        integer_logits[label] = BatchedRunner(networks[label]).run(test.x)
        results[label] = top1(integer_logits[label], test.y)
    print(
        f"top-1 accuracy on the {len(test)}-image Fashion-MNIST test sample (calibrated on "
        f"{len(calibration)} training images, MSE clipping):"
    )
    for label, value in results.items():
        print(f"  {label:<22} {value:.2%}")
    results["W8A8 on the accelerator"] = _accelerator(
        networks["W8A8"], integer_logits["W8A8"], test.x, test.y
    )
    return results


def _accelerator(quantized: ModuleOp, expected: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Compile the integer network for the edge16 preset, run the test sample on the simulated
    accelerator, check it against the integer reference's logits `expected` and print the
    latency profile."""
    start = time.perf_counter()
    compiled = compile_module(quantized, target=TARGET)
    program = compiled.program
    print(
        f"\ncompiled W8A8 for '{TARGET}' in {time.perf_counter() - start:.2f} s: "
        f"{len(program.instructions):,} instructions, {len(compiled.binary):,} bytes"
    )
    start = time.perf_counter()
    logits = program.run(x).outputs[0]  # one batched run: image i bit-exact to its run alone
    elapsed = time.perf_counter() - start
    same = int(np.sum(np.all(logits == expected, axis=1)))
    score = top1(logits, y)
    print(
        f"simulated {len(x)} images in {elapsed:.1f} s: top-1 {score:.2%}; logits bit-identical "
        f"to the integer reference on {same} of {len(x)} images\n"
    )
    stats = program.stats
    print(stats.summary())
    print(stats.table())
    return score
