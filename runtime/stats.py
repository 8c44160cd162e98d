"""Run statistics of a program on its machine: cycles, roofline, traffic, energy, per engine and
per layer, built from the timing model (`runtime.timing`); a text table and a Chrome trace.

Roofline (METHODS.md): a stretch of work needs at least max(compute bound, memory bound)
cycles, the compute bound being sum MACs / (rows * cols * fa * fw) over its convolutions at
their widths and the memory bound its DRAM bytes / dram_bytes_per_cycle. Utilization is that
bound over the simulated cycles. It never exceeds 1: the compute engine runs one conv at a time
and no conv beats the array's peak, and the single DRAM channel moves at most
dram_bytes_per_cycle bytes a cycle, all within the span measured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dopant.backend.costs import Cost, Traffic
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import ENGINES
from dopant.runtime import sim_report
from dopant.runtime.loader import load
from dopant.runtime.program import Program
from dopant.runtime.timing import STALLS, Slot, Timeline
from dopant.support.errors import InputError
from dopant.support.files import write_atomic

UNLABELLED = "(unlabelled)"  # the row of instructions outside every debug-map range


@dataclass(frozen=True)
class EngineStats:
    """One engine: instructions run, cycles busy, and cycles stalled by cause (`STALLS`)."""

    instructions: int
    busy_cycles: int
    stall_cycles: dict[str, int]


@dataclass(frozen=True)
class LayerStats:
    """The instructions of one layer (its debug-map ranges; ranges sharing a name form one
    row): when they ran and what they cost. Layers may overlap in time (pipelining)."""

    name: str
    instructions: int
    start_cycle: int  # first start
    end_cycle: int  # last end
    busy_cycles: dict[str, int]  # by engine
    stall_cycles: int  # token and DRAM waits of its instructions
    macs: int
    traffic_bytes: dict[str, int]
    compute_bound_cycles: float
    memory_bound_cycles: float
    fold_model_cycles: int  # SCALE-Sim's per-fold model over the layer's convs, for comparison
    compute_span_cycles: int  # first start to last end of its compute-engine instructions
    added_cycles: int  # how far it moves the run's end past all earlier layers' ends

    @property
    def cycles(self) -> int:
        return self.end_cycle - self.start_cycle

    @property
    def roofline_cycles(self) -> float:
        return max(self.compute_bound_cycles, self.memory_bound_cycles)

    @property
    def utilization(self) -> float:
        return self.roofline_cycles / self.cycles if self.cycles else 0.0

    @property
    def bound(self) -> str:
        """ "compute" or "memory": the larger of the layer's two roofline bounds."""
        return "compute" if self.compute_bound_cycles >= self.memory_bound_cycles else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instructions": self.instructions,
            "start_cycle": self.start_cycle,
            "end_cycle": self.end_cycle,
            "cycles": self.cycles,
            "busy_cycles": dict(self.busy_cycles),
            "stall_cycles": self.stall_cycles,
            "macs": self.macs,
            "traffic_bytes": dict(self.traffic_bytes),
            "compute_bound_cycles": self.compute_bound_cycles,
            "memory_bound_cycles": self.memory_bound_cycles,
            "roofline_cycles": self.roofline_cycles,
            "fold_model_cycles": self.fold_model_cycles,
            "compute_span_cycles": self.compute_span_cycles,
            "added_cycles": self.added_cycles,
            "utilization": self.utilization,
            "bound": self.bound,
        }


@dataclass(frozen=True)
class RunStats:
    """Everything measured about one run of a program (the same for every input)."""

    config_name: str
    clock_mhz: float
    total_cycles: int
    macs: int
    compute_bound_cycles: float
    memory_bound_cycles: float
    fold_model_cycles: int  # SCALE-Sim's per-fold model summed over the convs, for comparison
    traffic_bytes: dict[str, int]
    energy_pj: dict[str, float]  # mac, dram, scratchpad, accumulator, total
    engines: dict[str, EngineStats]
    layers: tuple[LayerStats, ...]
    slots: tuple[Slot, ...] = field(repr=False)  # the timeline, in program order
    slot_layers: tuple[str, ...] = field(repr=False)  # each instruction's layer name

    @property
    def seconds(self) -> float:
        return self.total_cycles / (self.clock_mhz * 1e6)

    @property
    def roofline_cycles(self) -> float:
        return max(self.compute_bound_cycles, self.memory_bound_cycles)

    @property
    def utilization(self) -> float:
        return self.roofline_cycles / self.total_cycles if self.total_cycles else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable summary (the per-instruction timeline is in `chrome_trace`)."""
        return {
            "config": self.config_name,
            "clock_mhz": self.clock_mhz,
            "total_cycles": self.total_cycles,
            "seconds": self.seconds,
            "macs": self.macs,
            "compute_bound_cycles": self.compute_bound_cycles,
            "memory_bound_cycles": self.memory_bound_cycles,
            "roofline_cycles": self.roofline_cycles,
            "utilization": self.utilization,
            "fold_model_cycles": self.fold_model_cycles,
            "traffic_bytes": dict(self.traffic_bytes),
            "energy_pj": dict(self.energy_pj),
            "engines": {
                name: {
                    "instructions": e.instructions,
                    "busy_cycles": e.busy_cycles,
                    "stall_cycles": dict(e.stall_cycles),
                }
                for name, e in self.engines.items()
            },
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> str:
        """A few lines: time, roofline, traffic, energy and each engine's busy and stall cycles."""
        return sim_report.summary_text(self)

    def table(self) -> str:
        """The per-layer table: cycles, share of the run, utilization, bound, stalls, bytes."""
        return sim_report.layer_table(self)

    def chrome_trace(self) -> dict[str, Any]:
        """The engine timelines in Chrome/Perfetto JSON (chrome://tracing, ui.perfetto.dev)."""
        return sim_report.chrome_trace(self)


def _energy(config: AccelConfig, traffic: Traffic, mac_pj: float) -> dict[str, float]:
    """Picojoules by component: MACs at their BitFusion widths, then bytes x pJ per byte."""
    parts = {
        "mac": mac_pj,
        "dram": traffic.dram_bytes * config.dram_energy_pj_per_byte,
        "scratchpad": (traffic.sp_read_bytes + traffic.sp_write_bytes)
        * config.scratchpad_energy_pj_per_byte,
        "accumulator": (traffic.acc_read_bytes + traffic.acc_write_bytes)
        * config.accumulator_energy_pj_per_byte,
    }
    return {**parts, "total": sum(parts.values())}


def _traffic(costs: Sequence[Cost]) -> Traffic:
    return sum((c.traffic for c in costs), Traffic())


def _layer(
    name: str, indices: Sequence[int], timeline: Timeline, config: AccelConfig, earlier_end: int
) -> LayerStats:
    """One layer's statistics; `earlier_end` is the latest end of the layers before it (layers
    overlap, so a layer is charged only the cycles by which it ends after all of them: these
    charges add up to the run's end)."""
    slots = [timeline.slots[i] for i in indices]
    costs = [timeline.costs[i] for i in indices]
    traffic = _traffic(costs)
    busy = dict.fromkeys(ENGINES, 0)
    for slot in slots:
        busy[slot.engine] += slot.cycles
    computing = [slot for slot in slots if slot.engine == "compute"]
    compute_span = (
        max(s.end_cycle for s in computing) - min(s.start_cycle for s in computing)
        if computing
        else 0
    )
    end = max(s.end_cycle for s in slots)
    return LayerStats(
        name=name,
        instructions=len(indices),
        start_cycle=min(s.start_cycle for s in slots),
        end_cycle=end,
        busy_cycles=busy,
        stall_cycles=sum(s.token_wait_cycles + s.dram_wait_cycles for s in slots),
        macs=sum(c.macs for c in costs),
        traffic_bytes=traffic.to_dict(),
        compute_bound_cycles=sum(c.compute_bound_cycles for c in costs),
        fold_model_cycles=sum(c.fold_model_cycles for c in costs),
        compute_span_cycles=compute_span,
        memory_bound_cycles=traffic.dram_bytes / config.dram_bytes_per_cycle,
        added_cycles=max(0, end - earlier_end),
    )


def _layer_names(program: Program) -> tuple[str, ...]:
    names = [UNLABELLED] * len(program.instructions)
    for layer in program.layers:
        for index in range(layer.start, min(layer.stop, len(names))):
            names[index] = layer.name
    return tuple(names)


def run_stats(program: Program, config: AccelConfig, timeline: Timeline) -> RunStats:
    """The statistics of `timeline`, the schedule of `program` on `config`."""
    names = _layer_names(program)
    members: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        members.setdefault(name, []).append(index)
    # Layers in debug-map order, the unlabelled remainder (if any) last.
    order = [layer.name for layer in program.layers if layer.name in members]
    order += [UNLABELLED] if UNLABELLED in members else []
    layers: list[LayerStats] = []
    earlier_end = 0
    for name in dict.fromkeys(order):
        layers.append(_layer(name, members[name], timeline, config, earlier_end))
        earlier_end = max(earlier_end, layers[-1].end_cycle)
    engines = {}
    for engine in ENGINES:
        slots = [s for s in timeline.slots if s.engine == engine]
        engines[engine] = EngineStats(
            instructions=len(slots),
            busy_cycles=sum(s.cycles for s in slots),
            stall_cycles={
                STALLS[0]: sum(s.token_wait_cycles for s in slots),
                STALLS[1]: sum(s.dram_wait_cycles for s in slots),
            },
        )
    traffic = _traffic(timeline.costs)
    return RunStats(
        config_name=config.name,
        clock_mhz=config.clock_mhz,
        total_cycles=timeline.total_cycles,
        macs=sum(c.macs for c in timeline.costs),
        compute_bound_cycles=sum(c.compute_bound_cycles for c in timeline.costs),
        memory_bound_cycles=traffic.dram_bytes / config.dram_bytes_per_cycle,
        fold_model_cycles=sum(c.fold_model_cycles for c in timeline.costs),
        traffic_bytes=traffic.to_dict(),
        energy_pj=_energy(config, traffic, sum(c.mac_energy_pj for c in timeline.costs)),
        engines=engines,
        layers=tuple(layers),
        slots=timeline.slots,
        slot_layers=names,
    )


def profile(program: Program) -> RunStats:
    """The statistics of `program` on the machine it was compiled for, from timing alone (no
    values are computed, so no inputs are needed)."""
    return program.stats


# ---- the command line's `run` and `profile` -----------------------------------------------


def _read_inputs(program: Program, path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The inputs in a .npy file (a program with one input) or a .npz file (by input name)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read inputs from '{os.fspath(path)}': {error}") from None
    if isinstance(data, np.ndarray):
        if len(program.inputs) != 1:
            names = ", ".join(f"'{d.name}'" for d in program.inputs)
            raise InputError(
                f"the program takes {len(program.inputs)} inputs ({names}); give them as a .npz "
                "file holding one array per input name"
            )
        return [data]
    with data:
        missing = [d.name for d in program.inputs if d.name not in data.files]
        if missing:
            raise InputError(
                f"'{os.fspath(path)}' holds {', '.join(data.files) or 'no arrays'} but not the "
                f"input(s) {', '.join(missing)}"
            )
        return [data[d.name] for d in program.inputs]


def main_run(
    binary: str | os.PathLike[str],
    input_npy: str | os.PathLike[str],
    trace_path: str | os.PathLike[str] | None = None,
) -> None:
    """`dopant run`: run the binary on the float inputs in `input_npy` (.npy, or .npz by input
    name), print its outputs, the run's summary and per-layer table, and write the Chrome trace
    to `trace_path` if given."""
    program = load(binary)
    result = program.run(*_read_inputs(program, input_npy), trace=trace_path is not None)
    for desc, value in zip(program.outputs, result.outputs, strict=True):
        text = np.array2string(value, threshold=20, precision=4)
        top = f" (argmax {int(value.argmax())})" if value.size > 1 else ""
        print(f"output '{desc.name}' {list(desc.shape)}{top}:\n{text}")
    print(result.stats.summary())
    print(result.stats.table())
    if trace_path is not None and result.trace is not None:
        write_atomic(trace_path, json.dumps(result.trace))


def main_profile(binary: str | os.PathLike[str]) -> None:
    """`dopant profile`: time the binary on its machine (no inputs needed) and print the run's
    summary and per-layer table."""
    stats = profile(load(binary))
    print(stats.summary())
    print(stats.table())
