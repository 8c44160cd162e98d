"""Sweep specs without running a point: every bad key or value is refused with the key and its
valid values, the settings grid is counted by hand, samples are drawn from it, and the machines
of presets, files and ranges are named and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dopant.backend.presets import preset
from dopant.codesign._sweep.space import Settings, machines, settings
from dopant.codesign._sweep.spec import SweepSpec
from dopant.compiler.cli import main
from dopant.support.errors import InputError


def spec(**tables: dict[str, Any]) -> SweepSpec:
    return SweepSpec.load(
        {"model": {"ref": "zoo:lenet5"}, "hardware": {"presets": ["edge16"]}, **tables}
    )


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"modle": {}}, r"unknown table\(s\) 'modle'; the tables are model, data, compression"),
        ({"data": {"calib": "x"}}, r"unknown key\(s\) calib in \[data\]; its keys are calibration"),
        ({"compression": {"mode": ["grid"]}}, r"mode 'grid' is not one of codesign, fixed"),
        ({"compression": {"bits": ["w3a8"]}}, r"\[compression\] bits=3 is not supported"),
        ({"compression": {"bits": ["4/8"]}}, r"bits '4/8' is not of the form w4a8"),
        ({"compression": {"latency_budget": ["fast"]}}, r"\[compression\] .*'fast'"),
        ({"compression": {"prune_method": ["l1"]}}, r"prune_method 'l1' is not one of magnitude"),
        ({"compression": {"quantize_method": ["max"]}}, r"quantize_method 'max' is not one of"),
        ({"compression": {"qat_epochs": [-1]}}, r"qat_epochs must be ints >= 0"),
        ({"compression": {"sampler": "halton"}}, r"sampler 'halton' is not one of sobol, random"),
        ({"compression": {"bits": "w8a8"}}, r"\[compression\] bits must be a non-empty list"),
        ({"model": {}}, r"\[model\] ref is required"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_the_valid_ones(
    tables: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        spec(**tables)


def test_a_machine_that_does_not_validate_gives_the_accelconfig_reason(tmp_path: Path) -> None:
    ranges = {"array": ["32x32"], "scratchpad_kib": [2]}
    with pytest.raises(InputError, match=r"32x32, scratchpad_kib=2: .*cannot double-buffer"):
        machines(spec(hardware={"base": "edge16", "ranges": ranges}))
    with pytest.raises(InputError, match=r"unknown key\(s\) rowz; the keys are array"):
        machines(spec(hardware={"ranges": {"rowz": [8]}}))
    with pytest.raises(InputError, match=r"array '16' is not ROWSxCOLS"):
        machines(spec(hardware={"ranges": {"array": ["16"]}}))
    with pytest.raises(InputError, match=r"presets 'edge64': unknown accelerator preset"):
        machines(spec(hardware={"presets": ["edge64"]}))
    with pytest.raises(InputError, match=r"\[hardware\] names no machine"):
        SweepSpec.load({"model": {"ref": "zoo:lenet5"}})
    toml = tmp_path / "sweep.toml"
    toml.write_text('[model]\nref = "zoo:lenet5"\n[hardware]\npresets = ["edge16"\n')
    with pytest.raises(InputError, match=r"sweep spec '.*sweep.toml' is not valid TOML"):
        SweepSpec.load(toml)


def test_the_grid_keeps_what_each_mode_uses() -> None:
    s = spec(
        compression={
            "mode": ["codesign", "fixed"],
            "latency_budget": ["0.5x", "0.7x"],
            "widths": [[4, 8]],
            "prune_method": ["sosp-h", "none"],
            "prune_target": ["", "macs=0.5"],
            "bits": ["w8a8", "w4a8"],
        }
    )
    found = settings(s)
    # By hand: codesign, 2 budgets x 2 methods (targets and uniform bits unused) = 4; fixed,
    # (sosp-h, macs=0.5) and (none, no target) -- sosp-h without a target prunes nothing, and
    # none ignores its target -- x 2 widths = 4.
    assert len(found) == 8
    assert [x.label() for x in found[:2]] == [
        "codesign 0.5x sosp-h mixed:4,8",
        "codesign 0.5x mixed:4,8",
    ]
    fixed = {(x.prune_method, x.prune_target, x.bits) for x in found if x.mode == "fixed"}
    assert fixed == {
        (m, t, b) for m, t in (("sosp-h", "macs=0.5"), ("none", "")) for b in ("w8a8", "w4a8")
    }
    with pytest.raises(InputError, match=r"widths \[4\] offer no choice"):
        settings(spec(compression={"widths": [[4]]}))


def test_a_sample_draws_distinct_settings_of_the_grid_repeatably() -> None:
    table = {
        "mode": ["fixed"],
        "prune_method": ["magnitude", "taylor", "sosp-h"],
        "prune_target": ["macs=0.2", "macs=0.4", "macs=0.6"],
        "bits": ["w8a8", "w4a8", "w4a4"],
    }
    grid = settings(spec(compression=table))
    assert len(grid) == 27
    for sampler in ("sobol", "random"):
        drawn = settings(spec(compression={**table, "sample": 9, "sampler": sampler}))
        assert len(drawn) == len(set(drawn)) == 9 and set(drawn) <= set(grid)
        again = settings(spec(compression={**table, "sample": 9, "sampler": sampler}))
        other = settings(spec(compression={**table, "sample": 9, "sampler": sampler, "seed": 1}))
        assert drawn == again and drawn != other
    sobol = settings(spec(compression={**table, "sample": 9}))
    # Quasi-random: 9 draws over 3 x 3 x 3 values see every value of every axis.
    for key in ("prune_method", "prune_target", "bits"):
        assert {getattr(x, key) for x in sobol} == set(table[key])
    assert settings(spec(compression={**table, "sample": 100})) == grid


def test_machines_from_presets_files_and_ranges(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(preset("small8").with_changes(name="mine").to_toml())
    (tmp_path / "sweep.toml").write_text(
        '[model]\nref = "zoo:lenet5"\n'
        '[hardware]\npresets = ["edge16"]\nconfigs = ["mine.toml"]\nbase = "edge16"\n'
        '[hardware.ranges]\narray = ["8x8", "32x32"]\ndataflow = ["ws", "os"]\n'
    )
    found = machines(SweepSpec.load(tmp_path / "sweep.toml"))
    assert [c.name for c in found] == [
        "edge16",
        "mine",
        "edge16[8x8,ws]",
        "edge16[8x8,os]",
        "edge16[32x32,ws]",
        "edge16[32x32,os]",
    ]
    assert found[1] == preset("small8").with_changes(name="mine")
    assert (found[4].rows, found[4].cols, found[4].dataflow) == (32, 32, "ws")
    assert found[4].scratchpad_kib == preset("edge16").scratchpad_kib
    twice = {"presets": ["edge16"], "ranges": {"array": ["8x8"]}, "base": "edge16"}
    assert len(machines(spec(hardware=twice))) == 2


def test_settings_are_plain_data() -> None:
    s = Settings("fixed", "", (), "magnitude", "macs=0.3", "w4a8", "minmax", 0, 2)
    assert s.weight_act_bits == (4, 8) and s.label() == "fixed macs=0.3 magnitude w4a8 qat2"
    assert s.to_dict()["widths"] == []


def test_the_cli_lists_the_points_without_running_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text(
        '[model]\nref = "zoo:lenet5"\n[compression]\nmode = ["fixed"]\nbits = ["w8a8", "w4a8"]\n'
        '[hardware]\npresets = ["edge16", "small8"]\n'
    )
    assert main(["sweep", str(spec_file), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "4 point(s): 2 setting(s) x 2 machine(s)",
        "  edge16 fixed dense w8a8",
        "  small8 fixed dense w8a8",
        "  edge16 fixed dense w4a8",
        "  small8 fixed dense w4a8",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]
    assert main(["sweep", str(spec_file)]) != 0
    assert "needs -o FOLDER" in capsys.readouterr().err
