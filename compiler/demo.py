"""The main job on an embedded default: import a zoo model, run the float pipeline, execute it
on the reference interpreter against torch, and print a per-op summary."""

from __future__ import annotations

import time

import numpy as np
import torch

from dopant.compiler.frontend import import_model
from dopant.compiler.models import load_model
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import format_table, op_rows
from dopant.runtime import reference

FLOAT_PIPELINE = "fold-batchnorm,fuse-activation"


def demo(model_ref: str = "zoo:resnet8", batch: int = 8) -> float:
    """Run the main job and return the reference interpreter's error relative to torch."""
    torch.set_num_threads(1)
    loaded = load_model(model_ref)
    shape = (batch, *loaded.example_input.shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    start = time.perf_counter()
    module = import_model(loaded.model, loaded.example_input[:1])
    imported_s = time.perf_counter() - start
    report = run_pipeline(module, FLOAT_PIPELINE)
    print(f"{model_ref}: imported in {imported_s:.2f} s; pipeline '{FLOAT_PIPELINE}':")
    print(report.table(), end="\n\n")
    print(format_table(op_rows(module)), end="\n\n")

    with torch.no_grad():
        expected = loaded.model(x).numpy()
    worst = 0.0
    for i in range(batch):  # the IR was traced at batch 1
        start = time.perf_counter()
        (got,) = reference.run(module, x[i : i + 1].numpy())
        worst = max(worst, float(np.abs(got - expected[i : i + 1]).max()))
    elapsed = time.perf_counter() - start
    relative = worst / float(np.abs(expected).max())
    print(
        f"reference interpreter vs torch on {batch} random inputs: max abs error {worst:.2e} "
        f"({relative:.1e} of the output scale), {elapsed * 1e3:.1f} ms per input"
    )
    return relative
