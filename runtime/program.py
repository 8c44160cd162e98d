"""A loaded program: the binary's contents (`backend.image.ProgramImage`) that can run on
the simulated accelerator."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from dopant.backend.image import (
    LayerRange,
    ProgramImage,
    Segment,
    TensorDesc,
    element_bytes,
    moved_bytes,
)

if TYPE_CHECKING:
    from dopant.runtime.simulator import RunResult
    from dopant.runtime.stats import RunStats

__all__ = ["LayerRange", "Program", "Segment", "TensorDesc", "element_bytes", "moved_bytes"]


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
        from dopant.runtime.stats import run_stats
        from dopant.runtime.timing import schedule

        config = self.accel_config()
        return run_stats(self, config, schedule(self.instructions, config))

    def run(self, *inputs: np.ndarray, trace: bool = False, values: bool = False) -> RunResult:
        """Run the program on the functional simulator and the timing model.

        Each float input is quantized with its TensorDesc (round half to even) into DRAM; the
        outputs come back dequantized (`.outputs`) and as integers (`.raw_outputs`), with the
        run's `.stats`, with `trace` a Chrome trace (`.trace`) and with `values` every
        intermediate value of the debug map as integers (`.values`). InputError names an input
        of the wrong count, shape or dtype; SimulationError an instruction that cannot run.
        """
        # Imported here: the simulator imports this module for Program.
        from dopant.runtime import simulator

        return simulator.run(self, inputs, trace, values)

    def run_raw(self, *inputs: np.ndarray, trace: bool = False, values: bool = False) -> RunResult:
        """`run` for already-quantized inputs: integer arrays within each input's range."""
        from dopant.runtime import simulator

        return simulator.run_raw(self, inputs, trace, values)
