"""Batch benchmark: the shipped 1000-image Fashion-MNIST test sample through the simulator, one
image per `Program.run` against one batched `Program.run` (a leading N axis: each instruction
runs once for every image), on the pretrained zoo models compiled W8A8 (calibrated with MSE
clipping on the 512 shipped calibration images, as `dopant demo`). Checks that the batched
outputs equal the one-at-a-time outputs bit for bit, and prints wall and CPU seconds (CPU time
shows what a neighbour's load took from the wall time).

    python benchmarks/batch.py [--models resnet8,lenet5] [--target edge16] [--images 1000]

One torch and BLAS thread, so the figures do not depend on how many cores are free.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dopant.compiler.driver import compile as compile_model
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained


def timed(work: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """`work()` with its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def row(name: str, target: str, x: np.ndarray, calibration: np.ndarray) -> str:
    """Compile `name`, run `x` one image at a time and batched, and format the table's row."""
    compiled = compile_model(
        load_pretrained(name),
        torch.from_numpy(x[:1]),
        target=target,
        calibration=calibration,
        method="mse",
    )
    program = compiled.program
    program.run(x[:1])  # the timing model and the token order, cached per program
    singles, single_s, single_cpu = timed(
        lambda: np.concatenate([program.run(x[i : i + 1]).raw_outputs[0] for i in range(len(x))])
    )
    batched, batch_s, batch_cpu = timed(lambda: program.run(x).raw_outputs[0])
    same = "yes" if np.array_equal(singles, batched) else "NO"
    return (
        f"{name:<9}{target:<8}{len(x):>7}{single_s:>10.2f}{single_cpu:>8.2f}"
        f"{batch_s:>11.2f}{batch_cpu:>8.2f}{single_s / batch_s:>9.1f}x"
        f"{len(x) / batch_s:>10.0f}  {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet8,lenet5")
    parser.add_argument("--target", default="edge16")
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    calibration, test = load_sample()
    x = test.x[: args.images]
    header = (
        f"{'model':<9}{'target':<8}{'images':>7}{'single s':>10}{'(cpu)':>8}{'batched s':>11}"
        f"{'(cpu)':>8}{'speed-up':>10}{'images/s':>10}  bit-identical"
    )
    print(header)
    print("-" * len(header))
    with threadpool_limits(1):
        for name in args.models.split(","):
            print(row(name, args.target, x, calibration.x), flush=True)


if __name__ == "__main__":
    main()
