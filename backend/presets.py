"""Named accelerator configurations: `preset("edge16")`, or `load_target` for a preset name
or a TOML path as the CLI takes them.

The numbers are of the size class of published designs, not copies of them: `small8` is a
microcontroller-class 8x8 array; `edge16` is a 16x16 edge accelerator in the class of
Gemmini's default 16x16 configuration (256 KiB scratchpad, 64 KiB accumulator; Genc et al.,
DAC 2021); `large32` a 32x32 array with wider memories. Energies per access follow the
ratios of Horowitz (ISSCC 2014, 45 nm): an 8-bit MAC ~0.2 pJ, on-chip SRAM ~1-2 pJ/byte,
DRAM ~100 pJ/byte.

DMA instructions in flight per load/store engine (`dma_outstanding_requests`): Gemmini's
default configuration keeps up to 16 TileLink requests of 64 bytes outstanding
(`max_in_flight_mem_reqs`) and holds 8 loads and 4 stores in its reservation station
(`reservation_station_entries_ld/_st`; GemminiConfigs.defaultConfig). A dopant DMA instruction
is a whole tile, so the count is of tiles: edge16 takes Gemmini's 8 loads; small8, a
microcontroller-class part, half that; large32 twice, as its 32-byte channel (32 B/cycle x 120
cycles = 3840 bytes in flight to cover the latency) needs more of its small parameter and bias
tiles outstanding to stay busy.
"""

from __future__ import annotations

from pathlib import Path

from dopant.backend.target import AccelConfig, ConfigError


def _presets() -> dict[str, AccelConfig]:
    return {
        "small8": AccelConfig(
            name="small8",
            rows=8,
            cols=8,
            dataflow="ws",
            scratchpad_kib=64,
            scratchpad_banks=4,
            accumulator_kib=16,
            accumulator_banks=2,
            dram_bytes_per_cycle=8,
            dram_latency_cycles=100,
            clock_mhz=200.0,
            vector_lanes=8,
            dma_outstanding_requests=4,
        ),
        "edge16": AccelConfig(
            name="edge16",
            rows=16,
            cols=16,
            dataflow="ws",
            scratchpad_kib=256,
            scratchpad_banks=4,
            accumulator_kib=64,
            accumulator_banks=2,
            dram_bytes_per_cycle=16,
            dram_latency_cycles=100,
            clock_mhz=500.0,
            vector_lanes=16,
            dma_outstanding_requests=8,
        ),
        "large32": AccelConfig(
            name="large32",
            rows=32,
            cols=32,
            dataflow="ws",
            scratchpad_kib=1024,
            scratchpad_banks=8,
            accumulator_kib=256,
            accumulator_banks=4,
            dram_bytes_per_cycle=32,
            dram_latency_cycles=120,
            clock_mhz=800.0,
            vector_lanes=32,
            dma_outstanding_requests=16,
        ),
    }


def preset_names() -> list[str]:
    return list(_presets())


def preset(name: str) -> AccelConfig:
    presets = _presets()
    if name not in presets:
        raise ConfigError(
            f"unknown accelerator preset '{name}'; the presets are "
            f"{', '.join(presets)} (or give a .toml file)"
        )
    return presets[name]


def load_target(spec: str, dataflow: str | None = None) -> AccelConfig:
    """A preset name (`edge16`) or a TOML file path, optionally with another dataflow."""
    config = (
        AccelConfig.from_toml(spec)
        if spec.endswith(".toml") or Path(spec).is_file()
        else preset(spec)
    )
    return config if dataflow is None else config.with_changes(dataflow=dataflow)
