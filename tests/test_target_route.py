"""The target takes one route: an AccelConfig object from Python goes straight to `tile` and
is recorded on the module as `accel.config`; text (a preset name or a .toml path) is parsed
only at the pipeline and CLI boundary; no file is written on the way."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dopant.backend.config_attr import CONFIG_ATTR, module_target, set_module_target
from dopant.backend.emit import emit_binary
from dopant.backend.presets import preset
from dopant.compiler.driver import CompileError, compile
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import parse, run_pipeline
from dopant.passes.tile import TilePass
from dopant.support.errors import DopantError
from tests.test_tile import conv_net

# Not a preset: edge16 with a 12x20 array, so no preset name can stand in for it.
ODD = preset("edge16").with_changes(name="odd", rows=12, cols=20)


@pytest.fixture
def quiet_tmp(tmp_path: Path) -> Iterator[Path]:
    """A fresh, empty folder as the temp directory, to see what a compile writes there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved


def test_an_accel_config_object_tiles_without_text_and_is_recorded_on_the_module() -> None:
    module = parse_ir(conv_net(8, (6, 6), 24))
    run_pipeline(module, [TilePass(ODD)])
    assert module_target(module) == ODD
    # The record is the config's canonical JSON, the one reader's input.
    assert json.loads(module.attributes[CONFIG_ATTR].data)["rows"] == 12  # type: ignore[attr-defined]


def test_tile_without_a_target_uses_the_machine_on_the_module() -> None:
    by_object = parse_ir(conv_net(8, (6, 6), 24))
    run_pipeline(by_object, [TilePass(ODD)])
    by_record = parse_ir(conv_net(8, (6, 6), 24))
    set_module_target(by_record, ODD)
    run_pipeline(by_record, "tile")  # pipeline text naming no target
    assert ir_text(by_record) == ir_text(by_object)
    # A target given as text wins over the record (re-planning for another machine).
    run_pipeline(by_record, 'tile{target="small8"}')
    assert module_target(by_record) == preset("small8")


def test_a_preset_object_prints_as_pipeline_text_and_any_other_is_refused() -> None:
    os16 = preset("edge16").with_changes(dataflow="os")
    assert str(TilePass(os16)) == 'tile{target="edge16" dataflow="os"}'
    assert parse(str(TilePass(os16)))[0].machine(parse_ir(conv_net(1, (3, 3), 1))) == os16
    with pytest.raises(DopantError, match="'odd' has no pipeline text: it is not a preset"):
        str(TilePass(ODD))


def test_compiling_for_a_custom_machine_writes_no_file_and_equals_its_toml(
    quiet_tmp: Path, tmp_path: Path
) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    example = torch.from_numpy(x[:1])
    by_object = compile(model, example, target=ODD, calibration=x)
    # Nothing written on the way (torch.export keeps its own cache folder there).
    assert [p.name for p in quiet_tmp.iterdir() if p.name != "torchinductor_root"] == []
    toml = tmp_path / "odd.toml"
    toml.write_text(ODD.to_toml())
    by_file = compile(model, example, target=str(toml), calibration=x)
    assert by_object.binary == by_file.binary
    assert module_target(by_object.ir("tiled")) == ODD
    assert emit_binary(by_object.ir("accel")) == by_object.binary


def test_a_failing_tile_reproduces_from_its_saved_ir_alone(quiet_tmp: Path) -> None:
    # 3x3 conv rows of 2000 columns do not fit the 1 KiB scratchpad of this machine twice.
    tiny = ODD.with_changes(name="tiny", rows=4, cols=4, scratchpad_kib=1, accumulator_kib=1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 3, 2000)).astype(np.float32)
    with pytest.raises(CompileError) as error:
        compile(model, torch.from_numpy(x[:1]), target=tiny, calibration=x)
    message = str(error.value)
    assert message.endswith("-p 'tile'")  # no target text: the saved IR names the machine
    saved = Path(message.split("The IR before that pass is in ")[1].split(";")[0])
    assert saved.parent.parent == quiet_tmp
    before = parse_ir(saved.read_text())
    assert module_target(before) == tiny
    with pytest.raises(DopantError, match="no tiling of"):
        run_pipeline(before, "tile")
