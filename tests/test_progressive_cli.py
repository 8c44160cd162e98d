"""`dopant progressive` end to end on the shipped LeNet-5: the per-stage table, the IR, binary and
stages.json it writes, the one-jump baseline, a rerun with --resume; and one-line errors before
any work for a schedule with a width the target lacks or one that goes up."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dopant.backend.presets import preset
from dopant.compiler.cli import main
from dopant.compiler.driver import is_quantized
from dopant.compiler.irio import read_ir
from dopant.compiler.models.datasets import load_sample
from dopant.runtime.loader import load

Run = tuple[Path, str, list[str]]


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=(x[:, 0] * 255).round().astype(np.uint8), y=y)
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("progressive-cli")
    train, test = load_sample()
    args = [
        "--quiet",
        "progressive",
        "zoo:lenet5",
        "--schedule",
        "w8a8,w4a4",
        "--train",
        _npz(folder / "train.npz", train.x[:128], train.y[:128]),
        "--eval",
        _npz(folder / "eval.npz", test.x[:200], test.y[:200]),
        "--calibration-method",
        "minmax",
        "--baseline",
        "-o",
        str(folder / "out"),
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return folder / "out", printed.getvalue(), args


def test_it_prints_the_stage_table_and_the_baseline(run: Run) -> None:
    _, printed, _ = run
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("stage    "))
    assert " ".join(header.split()) == "stage epochs top-1 start top-1 drop MACs cycles train s"
    rows = [line.split()[0] for line in lines[lines.index(header) + 2 :][:3]]
    assert rows == ["float", "w8a8", "w4a4"]
    assert any(line.startswith("progressive (2 stages)") for line in lines)
    assert any(line.startswith("one jump to w4a4") for line in lines)


def test_it_writes_the_ir_the_binary_and_the_stages(run: Run) -> None:
    out, _, _ = run
    report = json.loads((out / "stages.json").read_text())
    assert report["schedule"] == ["w8a8", "w4a4"] and report["target"] == "edge16"
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["w8a8", "w4a4"]
    assert stages[1]["drop"] == pytest.approx(stages[0]["top1"] - stages[1]["top1"])
    assert report["one_jump"]["stage"] == "w4a4" and report["one_jump"]["epochs"] == 2
    assert is_quantized(read_ir(str(out / "quantized.mlir")))
    program = load((out / "model.dpb").read_bytes(), preset("edge16"))
    assert program.stats.total_cycles == report["cycles"] == stages[-1]["cycles"]
    assert sorted(p.name for p in out.glob("stage-*")) == ["stage-1", "stage-2"]
    assert [p.name for p in (out / "one-jump").iterdir()] == ["stage-1"]


def test_a_rerun_with_resume_trains_nothing_and_writes_the_same(run: Run) -> None:
    out, _, args = run
    before = (out / "quantized.mlir").read_text(), (out / "model.dpb").read_bytes()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--resume"]) == 0
    assert "resumed after stage 2 'w4a4'" in printed.getvalue()
    assert "resumed after stage 1 'w4a4'" in printed.getvalue()  # the baseline
    assert ((out / "quantized.mlir").read_text(), (out / "model.dpb").read_bytes()) == before


NO_TWO_BITS = """name = "no2"
rows = 8
cols = 8
dataflow = "ws"
scratchpad_kib = 64
scratchpad_banks = 2
accumulator_kib = 16
accumulator_banks = 2
dram_bytes_per_cycle = 8
dram_latency_cycles = 50
clock_mhz = 500.0
vector_lanes = 8
weight_bits = [4, 8]
act_bits = [4, 8]
"""


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            "w8a8,w4a4,w2a4",
            "stage 3 'w2a4' asks for 2-bit weights, but the target 'no2' has 4, 8-bit weight lanes",
        ),
        ("w4a4,w8a4", "stage 2 'w8a4' raises the weight width from 4 bits (stage 1 'w4a4') to 8"),
    ],
)
def test_a_bad_schedule_fails_in_one_line_before_work(
    schedule: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no2.toml"
    target.write_text(NO_TWO_BITS)
    out = tmp_path / "out"
    code = main(
        [
            "progressive",
            "zoo:lenet5",
            "--schedule",
            schedule,
            "--target",
            str(target),
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not any(out.iterdir())
