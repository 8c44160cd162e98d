"""The sweep's table: one row per point, these columns, in this order (the CSV's header).

Every row has every column; a value that does not apply (no fine-tuning, a failed point) is
None, written as an empty CSV cell. `COLUMNS` is the one definition: the CSV writer, the reader
(types), the report's tables and the tests all take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column: its name, the Python type of its values, and what it holds."""

    name: str
    kind: type
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column(
        "point",
        str,
        "the content hash (12 hex) of its settings, target, model, data, dopant version",
    ),
    Column("label", str, "a short name for plots: target, then the compression settings"),
    Column("status", str, "'ok', or 'error' when the point failed (the sweep went on)"),
    Column("error", str, "a failed point's error message"),
    # the compression settings
    Column("mode", str, "'codesign' (the loop at a latency budget) or 'fixed' (one setting)"),
    Column("latency_budget", str, "codesign: the budget, e.g. '0.5x', '40000cycles', '2000fps'"),
    Column(
        "prune_method", str, "the channel saliency (sosp-h, sosp-i, taylor, magnitude) or 'none'"
    ),
    Column("prune_target", str, "fixed: the pruning target, e.g. 'macs=0.5' ('' for none)"),
    Column(
        "bits", str, "fixed: uniform widths 'w4a8'; codesign: the widths offered, 'mixed:2,4,8'"
    ),
    Column("quantize_method", str, "the activation calibration (minmax, percentile, mse)"),
    Column("finetune_epochs", int, "float fine-tuning epochs after pruning"),
    Column("qat_epochs", int, "quantization-aware training epochs of the integer network"),
    # the hardware
    Column("target", str, "the accelerator config's name"),
    Column("rows", int, "systolic array rows"),
    Column("cols", int, "systolic array columns"),
    Column("dataflow", str, "'ws' (weight stationary) or 'os' (output stationary)"),
    Column("scratchpad_kib", int, "scratchpad size, KiB"),
    Column("accumulator_kib", int, "accumulator size, KiB"),
    Column("dram_bytes_per_cycle", int, "DRAM bandwidth, bytes per cycle"),
    Column("clock_mhz", float, "clock, MHz"),
    Column("area_mm2", float, "the hardware-cost proxy: AccelConfig.area_mm2() (PEs and SRAM)"),
    # measured on the simulator's timing model
    Column("cycles", int, "measured cycles of one inference"),
    Column("fps", float, "inferences per second at the clock"),
    Column("energy_uj", float, "energy of one inference, microjoules"),
    Column("utilization", float, "roofline cycles / measured cycles"),
    Column("dram_bytes", int, "DRAM traffic of one inference, bytes"),
    Column("macs", int, "multiply-accumulates of one inference"),
    Column("weight_bytes", int, "the integer network's weights, packed at their widths, bytes"),
    # accuracy (top-1 on the evaluation data)
    Column("accuracy_float", float, "the float model before compression"),
    Column("accuracy_integer", float, "the compiled integer network (bit-exact to the simulator)"),
    Column("accuracy_finetuned", float, "the float model after pruning and fine-tuning"),
    # wall time
    Column("compile_s", float, "seconds to compress and compile the point"),
    Column("simulate_s", float, "seconds to evaluate it on the integer reference"),
)

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
KINDS: dict[str, type] = {c.name: c.kind for c in COLUMNS}


def parse_cell(name: str, text: str) -> Any:
    """A CSV cell of column `name` as its value (None for an empty cell)."""
    if text == "":
        return None
    kind = KINDS[name]
    return kind(float(text)) if kind is int else kind(text)
