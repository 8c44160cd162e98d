"""AccelConfig: presets, self-checks with reasons, TOML, stable hashes and BitFusion widths."""

from __future__ import annotations

from pathlib import Path

import pytest

from dopant.backend.presets import load_target, preset, preset_names
from dopant.backend.target import AccelConfig, ConfigError


def test_presets_are_valid_and_sized_as_named() -> None:
    assert preset_names() == ["small8", "edge16", "large32"]
    for name, dim in (("small8", 8), ("edge16", 16), ("large32", 32)):
        config = preset(name)
        assert (config.rows, config.cols) == (dim, dim) and config.problems() == []


def test_bitfusion_throughput() -> None:
    config = preset("edge16")
    # (8 / w) * (8 / a) MACs per PE per cycle on 16 x 16 = 256 PEs.
    assert config.macs_per_cycle(8, 8) == 256
    assert config.macs_per_cycle(4, 8) == 512
    assert config.macs_per_cycle(4, 4) == 1024
    assert config.macs_per_cycle(2, 2) == 4096
    with pytest.raises(ConfigError, match="does not fuse to w3a8"):
        config.macs_per_cycle(3, 8)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        preset("small8").with_changes(
            rows=0, dataflow="rs", clock_mhz=-1.0, act_bits=(8, 3), dma_outstanding_requests=0
        )
    message = str(error.value)
    assert message.startswith("accelerator config 'small8' is invalid: ")
    for reason in (
        "rows must be a positive integer, got 0",
        "dataflow must be one of ws, os",
        "clock_mhz must be positive, got -1.0",
        "act_bits must be an increasing",
        "dma_outstanding_requests must be a positive integer, got 0",
    ):
        assert reason in message


def test_capacity_checks_explain_themselves() -> None:
    with pytest.raises(ConfigError, match="a 1 KiB scratchpad cannot double-buffer 32x32"):
        preset("large32").with_changes(scratchpad_kib=1, scratchpad_banks=1)
    with pytest.raises(ConfigError, match="does not split into 3 equal banks"):
        preset("edge16").with_changes(scratchpad_banks=3)


def test_toml_round_trip_and_errors(tmp_path: Path) -> None:
    config = preset("edge16").with_changes(name="mine", dataflow="os")
    path = tmp_path / "mine.toml"
    path.write_text(config.to_toml())
    assert AccelConfig.from_toml(path) == config
    assert load_target(str(path)) == config
    assert load_target("edge16", dataflow="os").dataflow == "os"
    path.write_text(config.to_toml() + "speed = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) speed"):
        AccelConfig.from_toml(path)
    path.write_text("rows = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        AccelConfig.from_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        AccelConfig.from_toml(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="unknown accelerator preset 'edge17'; the presets are"):
        load_target("edge17")


def test_stable_hash_follows_the_machine_not_the_name() -> None:
    a = preset("edge16")
    assert a.stable_hash() == preset("edge16").stable_hash()
    assert a.with_changes(name="renamed").stable_hash() == a.stable_hash()
    assert a.with_changes(dram_latency_cycles=101).stable_hash() != a.stable_hash()
    assert a.with_changes(dataflow="os").stable_hash() != a.stable_hash()
    assert a.with_changes(dma_outstanding_requests=4).stable_hash() != a.stable_hash()
    # Pinned: a change to the hash recipe would orphan every binary ever written. edge16 keeps
    # 8 DMAs in flight; with 1, the machine before that field existed, it hashes as it did then.
    assert a.stable_hash().hex()[:16] == "39b0bb08724186f4"
    assert a.with_changes(dma_outstanding_requests=1).stable_hash().hex()[:16] == "7ebf4ca16fe1d15d"


def test_dma_requests_in_flight_default_to_one_and_travel_in_toml(tmp_path: Path) -> None:
    # small8 4, edge16 8, large32 16 (Gemmini-class DMA engines, see presets); a file that does
    # not name the field describes the machine before it existed, one DMA at a time.
    assert [preset(n).dma_outstanding_requests for n in preset_names()] == [4, 8, 16]
    text = preset("edge16").to_toml()
    assert "dma_outstanding_requests = 8\n" in text
    path = tmp_path / "old.toml"
    path.write_text(text.replace("dma_outstanding_requests = 8\n", ""))
    assert AccelConfig.from_toml(path).dma_outstanding_requests == 1


def test_the_area_proxy_counts_pes_and_sram_and_leaves_the_hash_alone(tmp_path: Path) -> None:
    edge = preset("edge16")
    # By hand: 16 x 16 PEs of 419 um^2 (an 8-bit multiplier, 282, and a 32-bit adder, 137) and
    # 256 + 64 KiB of SRAM at 4,050 um^2 per KiB: 107,264 + 1,296,000 um^2.
    assert edge.area_mm2() == pytest.approx(1.403264)
    assert edge.with_changes(rows=32, cols=32).area_mm2() == pytest.approx(0.429056 + 1.296)
    # Cost, not behaviour: binaries keep verifying, and another rate is another hash.
    assert edge.with_changes(pe_area_um2=419.0).stable_hash() == edge.stable_hash()
    assert edge.with_changes(pe_area_um2=500.0).stable_hash() != edge.stable_hash()
    with pytest.raises(ConfigError, match="sram_area_um2_per_kib must be a number >= 0"):
        edge.with_changes(sram_area_um2_per_kib=-1.0)
    path = tmp_path / "cheap.toml"
    path.write_text(edge.with_changes(pe_area_um2=300.0).to_toml())
    assert AccelConfig.from_toml(path).area_mm2() == pytest.approx((256 * 300 + 320 * 4050) / 1e6)
