"""The accelerator's description: one frozen `AccelConfig`, passed explicitly everywhere.

Every hardware number in dopant lives here or in `presets.py`. The machine: a rows x cols
systolic array of 8-bit PEs built from 2-bit BitFusion bricks (Sharma et al., ISCA 2018), so a
PE does (8 / w_bits) * (8 / a_bits) multiply-accumulates per cycle; a scratchpad for int8
operands and an int32 accumulator memory on chip; one DRAM channel; a vector unit for
requantization, residual adds and pooling. No xDSL here: the simulator imports this module.

On-chip rates that follow from the array (no field of their own): the array's edge is one 8-bit
lane per row (activations) and per column (weights), the operand width of the 8-bit PE that
BitFusion fuses, with sub-byte operands packed 8 / bits to a lane, as the DMA moves them; and
the accumulator takes one array row of `cols` int32 words per cycle, the width the array drains
into it (Gemmini's accumulator rows are DIM words wide: a mvin to it writes one row a cycle).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dopant.support.errors import DopantError

DATAFLOWS = ("ws", "os")  # weight stationary, output stationary (Samajdar et al., SCALE-Sim)
PE_OPERAND_BITS = 8  # a PE multiplies 8-bit operands; narrower ones fuse into it (BitFusion)


class ConfigError(DopantError):
    """An AccelConfig that cannot describe a machine; the message gives every reason."""


@dataclass(frozen=True)
class AccelConfig:
    """A systolic-array accelerator. Units are in the names; energies in picojoules.

    `weight_bits`/`act_bits` are the operand widths the PEs fuse to; `*_banks` split a memory
    into independently accessed banks; `vector_lanes` is elements per cycle of the vector unit;
    `dma_outstanding_requests` is how many DMA instructions each of the load and store engines
    may have in flight (started, not completed) at once. Its default, 1, is the machine before
    the field existed (an engine waited for each DMA to complete): `stable_hash` leaves it out
    at that value, so binaries written then still verify. The presets set their own.
    """

    name: str
    rows: int
    cols: int
    dataflow: str
    scratchpad_kib: int
    scratchpad_banks: int
    accumulator_kib: int
    accumulator_banks: int
    dram_bytes_per_cycle: int
    dram_latency_cycles: int
    clock_mhz: float
    vector_lanes: int
    weight_bits: tuple[int, ...] = (2, 4, 8)
    act_bits: tuple[int, ...] = (2, 4, 8)
    mac_energy_pj: float = 0.2
    scratchpad_energy_pj_per_byte: float = 1.0
    accumulator_energy_pj_per_byte: float = 2.0
    dram_energy_pj_per_byte: float = 100.0
    dma_outstanding_requests: int = 1
    # The hardware-cost proxy (`area_mm2`), 45 nm, from Horowitz (ISSCC 2014, "Computing's
    # energy problem"): an 8-bit multiplier is 282 um^2 and a 32-bit adder 137 um^2, so a PE
    # (its multiply and its int32 accumulate) is taken as 419 um^2; BitFusion's bricks fuse
    # into that 8-bit multiplier, so narrower widths add no area here. SRAM: a 45 nm 6T cell of
    # 0.346 um^2 (Intel's 45 nm SRAM) is 2,834 um^2 per KiB of cells; with the array efficiency
    # taken as 70% (decoders, sense amplifiers), 4,050 um^2 per KiB.
    pe_area_um2: float = 419.0
    sram_area_um2_per_kib: float = 4050.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(
                f"accelerator config '{self.name}' is invalid: " + "; ".join(problems) + "."
            )

    def problems(self) -> list[str]:
        """Every reason this config cannot describe a machine (empty when it is valid)."""
        found = []
        for field in (
            "rows",
            "cols",
            "scratchpad_kib",
            "scratchpad_banks",
            "accumulator_kib",
            "accumulator_banks",
            "dram_bytes_per_cycle",
            "vector_lanes",
            "dma_outstanding_requests",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                found.append(f"{field} must be a positive integer, got {value!r}")
        latency = self.dram_latency_cycles
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
            found.append(
                f"dram_latency_cycles must be an integer >= 0, got {self.dram_latency_cycles!r}"
            )
        if self.dataflow not in DATAFLOWS:
            found.append(f"dataflow must be one of {', '.join(DATAFLOWS)}, got {self.dataflow!r}")
        if not (_is_number(self.clock_mhz) and self.clock_mhz > 0):
            found.append(f"clock_mhz must be positive, got {self.clock_mhz!r}")
        for field in ("weight_bits", "act_bits"):
            widths = getattr(self, field)
            if (
                not isinstance(widths, tuple)
                or 8 not in widths
                or any(b not in (2, 4, 8) for b in widths)
                or list(widths) != sorted(set(widths))
            ):
                found.append(
                    f"{field} must be an increasing subset of (2, 4, 8) holding 8, got {widths!r}"
                )
        for field in (
            "mac_energy_pj",
            "scratchpad_energy_pj_per_byte",
            "accumulator_energy_pj_per_byte",
            "dram_energy_pj_per_byte",
            "pe_area_um2",
            "sram_area_um2_per_kib",
        ):
            value = getattr(self, field)
            if not (_is_number(value) and value >= 0):
                found.append(f"{field} must be a number >= 0, got {value!r}")
        if not found:
            found += self._capacity_problems()
        return found

    def _capacity_problems(self) -> list[str]:
        found = []
        if self.scratchpad_bytes % self.scratchpad_banks:
            found.append(
                f"scratchpad_kib {self.scratchpad_kib} does not split into "
                f"{self.scratchpad_banks} equal banks"
            )
        if self.accumulator_bytes % self.accumulator_banks:
            found.append(
                f"accumulator_kib {self.accumulator_kib} does not split into "
                f"{self.accumulator_banks} equal banks"
            )
        # Double buffering needs two full-array operand tiles and two accumulator tiles.
        if self.scratchpad_bytes < 4 * self.rows * self.cols:
            found.append(
                f"a {self.scratchpad_kib} KiB scratchpad cannot double-buffer "
                f"{self.rows}x{self.cols} operand tiles"
            )
        if self.accumulator_bytes < 2 * 4 * self.rows * self.cols:
            found.append(
                f"a {self.accumulator_kib} KiB accumulator cannot double-buffer "
                f"{self.rows}x{self.cols} int32 tiles"
            )
        return found

    # ---- derived quantities ---------------------------------------------------------------

    @property
    def scratchpad_bytes(self) -> int:
        return self.scratchpad_kib * 1024

    @property
    def accumulator_bytes(self) -> int:
        return self.accumulator_kib * 1024

    @property
    def accumulator_words(self) -> int:
        """int32 entries of the accumulator memory."""
        return self.accumulator_bytes // 4

    def fusion(self, w_bits: int, a_bits: int) -> tuple[int, int]:
        """(activation, weight) fusion factors: a PE holds 8/a_bits activations and 8/w_bits
        weights, so it does their product in MACs per cycle (BitFusion)."""
        if w_bits not in self.weight_bits or a_bits not in self.act_bits:
            raise ConfigError(
                f"'{self.name}' does not fuse to w{w_bits}a{a_bits}; it supports "
                f"weights {self.weight_bits} and activations {self.act_bits}"
            )
        return PE_OPERAND_BITS // a_bits, PE_OPERAND_BITS // w_bits

    def macs_per_cycle(self, w_bits: int = 8, a_bits: int = 8) -> int:
        """Peak multiply-accumulates per cycle of the array at these widths."""
        fa, fw = self.fusion(w_bits, a_bits)
        return self.rows * self.cols * fa * fw

    @property
    def edge_lane_bits_per_cycle(self) -> int:
        """Bits one array edge lane (a row's activations, a column's weights) carries a cycle."""
        return PE_OPERAND_BITS

    @property
    def accumulator_write_words_per_cycle(self) -> int:
        """int32 words a load writes into the accumulator per cycle: one array row."""
        return self.cols

    def area_mm2(self) -> float:
        """The hardware-cost proxy, mm^2: rows x cols PEs and the scratchpad and accumulator
        SRAM at the area fields' rates (their comment gives the sources). A proxy for ranking
        configs, not a layout: wires, the vector unit and the DMA engines are left out."""
        pes_um2 = self.rows * self.cols * self.pe_area_um2
        sram_um2 = (self.scratchpad_kib + self.accumulator_kib) * self.sram_area_um2_per_kib
        return (pes_um2 + sram_um2) / 1e6

    def cycles_to_seconds(self, cycles: float) -> float:
        return cycles / (self.clock_mhz * 1e6)

    def with_changes(self, **changes: Any) -> AccelConfig:
        return dataclasses.replace(self, **changes)

    def __hash__(self) -> int:
        return self._field_hash

    @functools.cached_property
    def _field_hash(self) -> int:
        # Computed once: the tiler's caches hash the config on every lookup (tens of thousands
        # per network), and the dataclass hash would rebuild the tuple of all fields each time.
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    # ---- identity and files ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }

    def stable_hash(self) -> bytes:
        """32 bytes that change whenever anything about the machine changes (not its name).

        SHA-256 of the canonical JSON of every field but `name` (and but a field added later
        while it holds the value that was the machine before it: `_HASHED_ONLY_WHEN_SET`): same
        machine, same hash, on every platform and Python version; binaries carry it to refuse a
        different machine.
        """
        fields = {
            k: v
            for k, v in self.to_dict().items()
            if k != "name" and not (k in _HASHED_ONLY_WHEN_SET and _HASHED_ONLY_WHEN_SET[k] == v)
        }
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).digest()

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "config") -> AccelConfig:
        known = {f.name for f in dataclasses.fields(AccelConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; the keys are "
                f"{', '.join(sorted(known))}"
            )
        required = {
            f.name for f in dataclasses.fields(AccelConfig) if f.default is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("weight_bits", "act_bits") and not isinstance(value, list | tuple):
                raise ConfigError(f"{source}: {key} must be a list of bit widths, got {value!r}")
            values[key] = tuple(value) if isinstance(value, list) else value
        return AccelConfig(**values)

    @staticmethod
    def from_toml(path: str | Path) -> AccelConfig:
        """Load a config from a TOML file of `key = value` lines (the field names)."""
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file '{file}' does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file '{file}' is not valid TOML: {error}") from None
        data.setdefault("name", file.stem)
        return AccelConfig.from_dict(data, f"config file '{file}'")

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(map(str, value))}]")
            else:
                lines.append(f"{key} = {value!r}")
        return "\n".join(lines) + "\n"


# Fields added after binaries were first written, at the value that is the machine from before
# they existed: left out of the hash at that value, so those binaries keep their hash.
# The area fields do not change what the machine does either: a binary runs the same.
_HASHED_ONLY_WHEN_SET: dict[str, object] = {
    f.name: f.default
    for f in dataclasses.fields(AccelConfig)
    if f.name in ("dma_outstanding_requests", "pe_area_um2", "sram_area_um2_per_kib")
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
