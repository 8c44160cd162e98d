"""A loaded program: the binary's contents (`backend.image.ProgramImage`) that can run on the
simulated accelerator, the functional simulator giving its values and the timing model its
statistics."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from dopant.backend.image import (
    LayerRange,
    ProgramImage,
    Segment,
    TensorDesc,
    element_bytes,
    moved_bytes,
)
from dopant.runtime import simulator
from dopant.runtime.stats import RunStats, run_stats
from dopant.runtime.timing import schedule

__all__ = [
    "LayerRange",
    "Program",
    "RunResult",
    "Segment",
    "TensorDesc",
    "element_bytes",
    "moved_bytes",
]


@dataclass(frozen=True)
class RunResult:
    """What a run of `batch` images produced, in the order of `Program.outputs`. With N > 1
    images every array has a leading N axis in place of the declared batch of 1
    (`simulator.batch_shape`); image i's slice equals what a run of image i alone gives."""

    outputs: tuple[np.ndarray, ...]  # float32, dequantized with each output's TensorDesc
    raw_outputs: tuple[np.ndarray, ...]  # int64, the integers in DRAM
    stats: RunStats  # of one image: the timing model does not depend on the inputs
    trace: dict[str, Any] | None  # Chrome/Perfetto trace of one image, when asked for
    values: dict[str, np.ndarray]  # int64 intermediate values by debug-map name, when asked for
    batch: int = 1  # N, the images run

    @property
    def total_cycles(self) -> int:
        """Cycles of the whole batch: the N images run one after another on the one
        accelerator (the program is compiled for one image), N x `stats.total_cycles`."""
        return self.batch * self.stats.total_cycles


@dataclasses.dataclass(frozen=True, eq=False)
class Program(ProgramImage):
    """An accelerator program ready to run: `Program.run(*float_inputs) -> RunResult`."""

    @staticmethod
    def of(image: ProgramImage) -> Program:
        return Program(**{f.name: getattr(image, f.name) for f in dataclasses.fields(image)})

    @functools.cached_property
    def stats(self) -> RunStats:
        """The statistics of a run, from the timing model alone: they depend on the program,
        not on its inputs, so every run shares one computation."""
        config, code = self.accel_config(), self.instructions
        return run_stats(code, self.layers, self.gemms, config, schedule(code, config))

    @functools.cached_property
    def order(self) -> tuple[int, ...]:
        """The order the engines run the instructions in (`simulator.token_order`): the same
        for every input, so every run shares one computation."""
        return simulator.token_order(self.instructions)

    def run(self, *inputs: np.ndarray, trace: bool = False, values: bool = False) -> RunResult:
        """Run the program on the functional simulator and the timing model.

        Each input has its declared shape (one image) or, when that leads with a batch of 1,
        the shape (N, *declared[1:]): N images, run at once and each bit-exact to its run alone
        (every input must hold the same N). Each float (or integer) input is quantized with its
        TensorDesc (round half to even) into DRAM; the outputs come back dequantized
        (`.outputs`) and as integers (`.raw_outputs`), with a leading N axis for N > 1, with
        one image's `.stats` (`.total_cycles` for the batch), with `trace` one image's Chrome
        trace (`.trace`) and with `values` every intermediate value of the debug map as
        integers (`.values`, with the leading N axis too: N x the debug map's size in memory).
        InputError names an input of the wrong count, shape, batch or dtype; SimulationError an
        instruction that cannot run (and, in a batch, the first image it fails for).
        """
        return self._result(simulator.quantize_inputs(self, inputs), trace, values)

    def run_raw(self, *inputs: np.ndarray, trace: bool = False, values: bool = False) -> RunResult:
        """`run` for already-quantized inputs: integer arrays within each input's range, one
        image or a batch of N as in `run`."""
        return self._result(simulator.check_raw_inputs(self, inputs), trace, values)

    def _result(self, raw_inputs: list[np.ndarray], trace: bool, values: bool) -> RunResult:
        computed = simulator.simulate(self, raw_inputs, values, self.order)
        stats = self.stats  # the same for every input: computed once per program
        return RunResult(
            computed.outputs,
            computed.raw_outputs,
            stats,
            stats.chrome_trace() if trace else None,
            computed.values,
            computed.batch,
        )
