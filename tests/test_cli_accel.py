"""The accelerator commands of the CLI: run, profile, disasm, asm, isa, targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dopant.backend.asm import parse_assembly
from dopant.backend.binary import save_program
from dopant.backend.image import LayerRange, ProgramImage, Segment, TensorDesc
from dopant.backend.presets import preset
from dopant.compiler.cli import main

SMALL8 = preset("small8")
# relu by vrequant: m0 = 2^30, shift = 1 is the multiplier 1.0; clamp to [0, 127].
CODE = """
load to_acc=1 dram=64 d=1 h=1 w=2 sw=1 bits=32 signed=1 src_h=1 src_w=2
load d=1 h=1 w=6 sw=1 bits=8 signed=1 src_h=1 src_w=6 signal=0b1
vrequant wait=0b1 signal=0b10 out=16 count=6 params=0 lo=0 hi=127
store wait=0b10 local=16 dram=8 d=1 h=1 w=6 sw=1 bits=8 signed=1
"""


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    code = parse_assembly(CODE)
    image = ProgramImage(
        SMALL8.stable_hash(),
        SMALL8.to_dict(),
        tuple(code),
        (Segment(64, 32, True, np.array([1 << 30, 1], np.int64)),),
        (TensorDesc("x", (2, 3), 0, 8, True, 0.5, 0),),
        (TensorDesc("y", (2, 3), 8, 8, True, 0.5, 0),),
        (LayerRange("params", 0, 1), LayerRange("relu", 1, 4)),
        128,
    )
    path = tmp_path / "relu.dpb"
    save_program(image, path)
    return path


def test_run_prints_outputs_and_writes_a_trace(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.array([[1.0, -1.0, 2.5], [-3.0, 0.0, 0.25]], np.float32))
    trace = tmp_path / "t.json"
    assert main(["run", str(binary), "--input", str(x), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    # relu of the quantized input, dequantized: [1, 0, 2.5], [0, 0, 0] (0.25 -> 0.5 steps: 0).
    assert "output 'y' [2, 3]" in out and "[[1.  0.  2.5]\n [0.  0.  0. ]]" in out
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["name"] for e in events if e.get("ph") == "X"}
    assert {"params: load", "relu: load", "relu: vrequant", "relu: store"} <= names


def test_profile_prints_a_per_layer_table(binary: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(binary)]) == 0
    out = capsys.readouterr().out
    assert "relu" in out and "params" in out and "cycles" in out


def test_disasm_then_asm_round_trips_the_binary(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "relu.s"
    assert main(["disasm", str(binary), "-o", str(text)]) == 0
    assert "vrequant wait=0b1 signal=0b10" in text.read_text()
    rebuilt = tmp_path / "again.dpb"
    assert main(["asm", str(text), "--binary", str(binary), "-o", str(rebuilt)]) == 0
    assert rebuilt.read_bytes() == binary.read_bytes()


def test_bad_binaries_and_assembly_are_one_line_errors(
    binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.dpb"
    broken.write_bytes(binary.read_bytes()[:100])
    assert main(["profile", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dopant: error: ") and err.count("\n") == 1 and "byte" in err
    bad = tmp_path / "bad.s"
    bad.write_text("load d=1\nfrobnicate x=1\n")
    assert main(["asm", str(bad), "--binary", str(binary), "-o", str(tmp_path / "o.dpb")]) == 1
    assert f"{bad}:2" in capsys.readouterr().err
    assert not (tmp_path / "o.dpb").exists()


def test_isa_and_targets_print_from_their_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["isa"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | `conv` | compute |" in out and "`w_bits` 4" in out
    assert main(["targets"]) == 0
    assert 'name = "edge16"' in capsys.readouterr().out
