"""Simulator benchmark: ResNet-18 at 224x224 (about 1.8 GMAC) compiled by dopant and run on the
simulated accelerator, per preset and dataflow: compile time, instructions, functional run wall
time (values and timing together), simulated cycles, utilization against the roofline bound, and
for comparison the standard systolic fold model (SCALE-Sim, Samajdar et al., ISPASS 2020;
`backend.costs.fold_model_cycles`) of the untiled conv and linear layers, summed over them.

    python benchmarks/simulator.py [--model resnet18] [--targets edge16,large32] [--dataflows ws,os]

Weights are random (He init, the zoo's); the network is calibrated on 2 random images, W8A8.
One BLAS thread, so the figures do not depend on a neighbour's load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dopant.compiler.driver import compile as compile_model
from dopant.compiler.models import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--targets", default="edge16,large32")
    parser.add_argument("--dataflows", default="ws,os")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    entry = zoo.get(args.model)
    model = entry.build().eval()
    shape = entry.input_shape
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape[1:])).astype(np.float32)
    header = (
        f"{'target':<9}{'flow':<5}{'compile s':>10}{'instrs':>8}{'sim s':>8}"
        f"{'cycles':>13}{'util':>7}{'fold model':>13}{'MACs':>15}"
    )
    print(f"{args.model} {list(shape)}, W8A8")
    print(header)
    print("-" * len(header))
    with threadpool_limits(1):
        for target in args.targets.split(","):
            for dataflow in args.dataflows.split(","):
                start = time.perf_counter()
                compiled = compile_model(
                    model, torch.from_numpy(x[:1]), target=target, calibration=x, dataflow=dataflow
                )
                compile_s = time.perf_counter() - start
                program = compiled.program
                start = time.perf_counter()
                stats = program.run(x[:1]).stats
                sim_s = time.perf_counter() - start
                print(
                    f"{target:<9}{dataflow:<5}{compile_s:>10.1f}{len(program.instructions):>8,}"
                    f"{sim_s:>8.2f}{stats.total_cycles:>13,}{stats.utilization:>7.1%}"
                    f"{stats.fold_model_cycles:>13,}{stats.macs:>15,}"
                )


if __name__ == "__main__":
    main()
