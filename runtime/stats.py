"""Run statistics of a program on its machine: cycles, roofline, traffic, energy, per engine and
per layer, built from the timing model (`runtime.timing`), and how they present themselves: a
summary, a per-layer table and a Chrome/Perfetto trace.

Roofline (METHODS.md): a stretch of work needs at least max(compute bound, memory bound)
cycles, the compute bound being sum MACs / (rows * cols * fa * fw) over its convolutions at
their widths and the memory bound its DRAM bytes / dram_bytes_per_cycle. Utilization is that
bound over the simulated cycles. It never exceeds 1: the compute engine runs one conv at a time
and no conv beats the array's peak, and the single DRAM channel moves at most
dram_bytes_per_cycle bytes a cycle, all within the span measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dopant.backend.costs import Cost, Traffic, fold_model_cycles
from dopant.backend.image import LayerGemm, LayerRange
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import ENGINES, Instruction
from dopant.runtime.timing import STALLS, Slot, Timeline, busy_cycles

UNLABELLED = "(unlabelled)"  # the row of instructions outside every debug-map range


@dataclass(frozen=True)
class EngineStats:
    """One engine: instructions run, cycles busy (with at least one instruction in flight), and
    cycles stalled by cause (`STALLS`)."""

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
    fold_model_cycles: int  # the standard fold model of its untiled GEMMs (0 without GEMMs)
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
    fold_model_cycles: int  # the standard fold model summed over the program's layer GEMMs
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
        return summary_text(self)

    def table(self) -> str:
        """The per-layer table: cycles, share of the run, utilization, bound, stalls, bytes."""
        return layer_table(self)

    def chrome_trace(self) -> dict[str, Any]:
        """The engine timelines in Chrome/Perfetto JSON (chrome://tracing, ui.perfetto.dev)."""
        return chrome_trace(self)


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


def _fold_models(gemms: Sequence[LayerGemm], config: AccelConfig) -> dict[str, int]:
    """Each layer's standard fold model (`costs.fold_model_cycles`) from its untiled GEMMs in
    the debug map: an independent reference for its tiles, not a sum of their costs."""
    models: dict[str, int] = {}
    for g in gemms:
        cycles = fold_model_cycles(g.m, g.k, g.n, g.groups, g.w_bits, g.a_bits, config)
        models[g.name] = models.get(g.name, 0) + cycles
    return models


def _layer(
    name: str,
    indices: Sequence[int],
    timeline: Timeline,
    config: AccelConfig,
    earlier_end: int,
    fold_model: int,
) -> LayerStats:
    """One layer's statistics; `earlier_end` is the latest end of the layers before it (layers
    overlap, so a layer is charged only the cycles by which it ends after all of them: these
    charges add up to the run's end); `fold_model` is its standard fold model."""
    slots = [timeline.slots[i] for i in indices]
    costs = [timeline.costs[i] for i in indices]
    traffic = _traffic(costs)
    busy = {engine: busy_cycles(s for s in slots if s.engine == engine) for engine in ENGINES}
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
        fold_model_cycles=fold_model,
        compute_span_cycles=compute_span,
        memory_bound_cycles=traffic.dram_bytes / config.dram_bytes_per_cycle,
        added_cycles=max(0, end - earlier_end),
    )


def _layer_names(count: int, layers: Sequence[LayerRange]) -> tuple[str, ...]:
    names = [UNLABELLED] * count
    for layer in layers:
        for index in range(layer.start, min(layer.stop, len(names))):
            names[index] = layer.name
    return tuple(names)


def run_stats(
    instructions: Sequence[Instruction],
    layers: Sequence[LayerRange],
    gemms: Sequence[LayerGemm],
    config: AccelConfig,
    timeline: Timeline,
) -> RunStats:
    """The statistics of `timeline`, the schedule of `instructions` on `config`, per layer of
    the debug map's `layers` (ranges of instructions), each compared with the fold model of
    its untiled `gemms`."""
    names = _layer_names(len(instructions), layers)
    members: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        members.setdefault(name, []).append(index)
    # Layers in debug-map order, the unlabelled remainder (if any) last.
    order = [layer.name for layer in layers if layer.name in members]
    order += [UNLABELLED] if UNLABELLED in members else []
    per_layer: list[LayerStats] = []
    earlier_end = 0
    models = _fold_models(gemms, config)
    for name in dict.fromkeys(order):
        model = models.get(name, 0)
        per_layer.append(_layer(name, members[name], timeline, config, earlier_end, model))
        earlier_end = max(earlier_end, per_layer[-1].end_cycle)
    engines = {}
    for engine in ENGINES:
        slots = [s for s in timeline.slots if s.engine == engine]
        engines[engine] = EngineStats(
            instructions=len(slots),
            busy_cycles=busy_cycles(slots),
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
        fold_model_cycles=sum(models.values()),
        traffic_bytes=traffic.to_dict(),
        energy_pj=_energy(config, traffic, sum(c.mac_energy_pj for c in timeline.costs)),
        engines=engines,
        layers=tuple(per_layer),
        slots=timeline.slots,
        slot_layers=names,
    )


# ---- presentation ----------------------------------------------------------------------------


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def summary_text(stats: RunStats) -> str:
    """Totals of a run: time, roofline and utilization, traffic, energy, and each engine."""
    t, e = stats.traffic_bytes, stats.energy_pj
    lines = [
        f"accelerator '{stats.config_name}' at {stats.clock_mhz:g} MHz: "
        f"{stats.total_cycles:,} cycles = {stats.seconds * 1e6:,.1f} us",
        f"{stats.macs:,} MACs; roofline {stats.roofline_cycles:,.0f} cycles (compute "
        f"{stats.compute_bound_cycles:,.0f}, memory {stats.memory_bound_cycles:,.0f}); "
        f"utilization {_percent(stats.roofline_cycles, stats.total_cycles)}; standard fold "
        f"model of the untiled layers {stats.fold_model_cycles:,} cycles",
        f"bytes: DRAM read {t['dram_read_bytes']:,} write {t['dram_write_bytes']:,}; scratchpad "
        f"read {t['sp_read_bytes']:,} write {t['sp_write_bytes']:,}; accumulator read "
        f"{t['acc_read_bytes']:,} write {t['acc_write_bytes']:,}",
        f"energy: {e['total'] / 1e6:,.3f} uJ (MACs {_percent(e['mac'], e['total'])}, DRAM "
        f"{_percent(e['dram'], e['total'])}, scratchpad {_percent(e['scratchpad'], e['total'])}, "
        f"accumulator {_percent(e['accumulator'], e['total'])})",
        f"{'engine':<8} {'instrs':>7} {'busy':>12} {'busy %':>7} "
        + " ".join(f"{name:>12}" for name in STALLS),
    ]
    for name, engine in stats.engines.items():
        stalls = " ".join(f"{engine.stall_cycles[s]:>12,}" for s in STALLS)
        lines.append(
            f"{name:<8} {engine.instructions:>7,} {engine.busy_cycles:>12,} "
            f"{_percent(engine.busy_cycles, stats.total_cycles):>7} {stalls}"
        )
    return "\n".join(lines)


def layer_table(stats: RunStats) -> str:
    """One row per layer: cycles (first start to last end), the cycles it adds to the run and
    their share (layers overlap in time, so a layer adds only what it ends after all earlier
    ones; the adds sum to the run), roofline utilization, the larger bound, stall cycles of its
    instructions, DRAM bytes and MACs; then the whole run."""
    width = max([len("layer"), len("total")] + [len(layer.name) for layer in stats.layers])
    header = (
        f"{'layer':<{width}} {'cycles':>12} {'adds':>12} {'share':>7} {'util':>7} {'bound':>8} "
        f"{'stalls':>12} {'DRAM bytes':>14} {'MACs':>15}"
    )
    lines = [header, "-" * len(header)]
    total = stats.total_cycles
    for layer in stats.layers:
        dram = layer.traffic_bytes["dram_read_bytes"] + layer.traffic_bytes["dram_write_bytes"]
        lines.append(
            f"{layer.name:<{width}} {layer.cycles:>12,} {layer.added_cycles:>12,} "
            f"{_percent(layer.added_cycles, total):>7} "
            f"{_percent(layer.roofline_cycles, layer.cycles):>7} {layer.bound:>8} "
            f"{layer.stall_cycles:>12,} {dram:>14,} {layer.macs:>15,}"
        )
    stalls = sum(sum(e.stall_cycles.values()) for e in stats.engines.values())
    dram = stats.traffic_bytes["dram_read_bytes"] + stats.traffic_bytes["dram_write_bytes"]
    bound = "compute" if stats.compute_bound_cycles >= stats.memory_bound_cycles else "memory"
    lines += [
        "-" * len(header),
        f"{'total':<{width}} {total:>12,} {total:>12,} {_percent(total, total):>7} "
        f"{_percent(stats.roofline_cycles, total):>7} {bound:>8} {stalls:>12,} {dram:>14,} "
        f"{stats.macs:>15,}",
        "(cycles: a layer's first start to last end, overlapping its neighbours; adds: the "
        "cycles by which it ends after every earlier layer, which sum to the run's cycles)",
    ]
    return "\n".join(lines)


def chrome_trace(stats: RunStats) -> dict[str, Any]:
    """Chrome trace-event JSON: one track (thread) per engine, and one more per further DMA an
    engine had in flight at once (`load`, `load 2`, ...: events on a track must not overlap),
    one complete ("X") event per instruction named `layer: mnemonic`, times in microseconds at
    the config's clock."""
    us_per_cycle = 1.0 / stats.clock_mhz
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": stats.config_name}}
    ]
    lanes = {(engine, 0) for engine in ENGINES} | {(s.engine, s.lane) for s in stats.slots}

    def track(engine: str, lane: int) -> int:
        return ENGINES.index(engine) + len(ENGINES) * lane  # lane 0: the engine's index

    for order, (engine, lane) in enumerate(
        sorted(lanes, key=lambda e: (ENGINES.index(e[0]), e[1]))
    ):
        tid, name = track(engine, lane), engine if lane == 0 else f"{engine} {lane + 1}"
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": 1,
                "tid": tid,
                "args": {"sort_index": order},
            }
        )
    for slot, layer in zip(stats.slots, stats.slot_layers, strict=True):
        events.append(
            {
                "name": f"{layer}: {slot.op}",
                "cat": slot.op,
                "ph": "X",
                "pid": 1,
                "tid": track(slot.engine, slot.lane),
                "ts": slot.start_cycle * us_per_cycle,
                "dur": slot.cycles * us_per_cycle,
                "args": {
                    "instruction": slot.index,
                    "layer": layer,
                    "start_cycle": slot.start_cycle,
                    "end_cycle": slot.end_cycle,
                    "token_wait_cycles": slot.token_wait_cycles,
                    "dram_wait_cycles": slot.dram_wait_cycles,
                },
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"config": stats.config_name, "clock_mhz": stats.clock_mhz},
    }
