"""How `RunStats` presents itself: a summary, a per-layer table and a Chrome/Perfetto trace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dopant.dialects.isa import ENGINES
from dopant.runtime.timing import STALLS

if TYPE_CHECKING:
    from dopant.runtime.stats import RunStats


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
        f"utilization {_percent(stats.roofline_cycles, stats.total_cycles)}; SCALE-Sim fold "
        f"model of the convs {stats.fold_model_cycles:,} cycles",
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
    """Chrome trace-event JSON: one track (thread) per engine, one complete ("X") event per
    instruction named `layer: mnemonic`, times in microseconds at the config's clock."""
    us_per_cycle = 1.0 / stats.clock_mhz
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": stats.config_name}}
    ]
    for tid, engine in enumerate(ENGINES):
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": engine}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": 1,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    for slot, layer in zip(stats.slots, stats.slot_layers, strict=True):
        events.append(
            {
                "name": f"{layer}: {slot.op}",
                "cat": slot.op,
                "ph": "X",
                "pid": 1,
                "tid": ENGINES.index(slot.engine),
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
