"""`dopant sweep` end to end on LeNet-5: six points (three fixed settings on two machines) in
this process and on two Ray workers give the same table; each row's cycles are a direct
compile's, a co-design row's a direct co-design run's; a sweep killed midway runs only the
missing points when rerun; a widened sweep reuses its points, and its infeasible point is a row
with the loop's error; a folder of another sweep or of other files is refused; a model file and
data beside the spec are found, and the file's bytes are part of each point's identity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from dopant.codesign._sweep.result import SweepResult
from dopant.codesign._sweep.run import sweep
from dopant.codesign._sweep.store import read_table
from dopant.codesign.loop import codesign
from dopant.compiler.cli import main
from dopant.compiler.driver import compile
from dopant.compiler.evaluate import top1
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.support.errors import InputError

CALIBRATION, EVAL = 32, 100  # shipped images: calibration (and saliency), evaluation
SPEC: dict[str, Any] = {
    "model": {"ref": "zoo:lenet5"},
    "data": {"calibration_limit": CALIBRATION, "eval_limit": EVAL},
    "compression": {  # three settings: dense, and two saliencies at one target
        "mode": ["fixed"],
        "prune_method": ["magnitude", "taylor"],
        "prune_target": ["", "macs=0.3"],
        "bits": ["w4a8"],
    },
    "hardware": {"presets": ["edge16", "small8"]},
}
TIMES = ("compile_s", "simulate_s")  # wall time: the one thing two runs may differ in


def _without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, Path]:
    folder = tmp_path_factory.mktemp("sweep") / "out"
    return sweep(SPEC, folder), folder


def test_six_points_in_order_with_every_column(swept: tuple[SweepResult, Path]) -> None:
    result, folder = swept
    labels = [row["label"] for row in result.table]
    assert labels == [
        f"{target} {setting}"
        for setting in (
            "fixed dense w4a8",
            "fixed macs=0.3 magnitude w4a8",
            "fixed macs=0.3 taylor w4a8",
        )
        for target in ("edge16", "small8")
    ]
    assert all(row["status"] == "ok" and row["error"] is None for row in result.table)
    assert len({row["point"] for row in result.table}) == 6
    assert read_table(folder / "table.csv") == result.table
    for row in result.table:
        # By hand: FPS is the clock over the cycles; the proxy is AccelConfig.area_mm2's.
        assert row["fps"] == pytest.approx(row["clock_mhz"] * 1e6 / row["cycles"])
        assert 0 < row["utilization"] <= 1 and row["energy_uj"] > 0
    areas = sorted({r["area_mm2"] for r in result.table})
    assert areas == pytest.approx([0.350816, 1.403264])


def test_each_row_is_a_direct_compile_and_simulation(swept: tuple[SweepResult, Path]) -> None:
    result, _ = swept
    calibration, test = load_sample()
    x, y = test.x[:EVAL], test.y[:EVAL]
    for row in result.table[:2]:  # fixed dense w4a8, on both machines
        compiled = compile(
            load_pretrained("lenet5"),
            torch.from_numpy(x[:1]),
            target=row["target"],
            calibration=calibration.x[:CALIBRATION],
            weight_bits=4,
        )
        assert row["cycles"] == compiled.program.stats.total_cycles
        logits = compiled.run(x).outputs[0]  # the simulator, not the reference the sweep used
        assert row["accuracy_integer"] == pytest.approx(top1(logits, y))
        assert row["model_bytes"] < compiled.program.dram_bytes


def test_the_folder_has_the_fronts_and_the_report(swept: tuple[SweepResult, Path]) -> None:
    result, folder = swept
    front = result.pareto(x="fps", y="accuracy_integer")
    ok = [r for r in result.table if r["status"] == "ok"]
    for row in ok:  # by brute force: a row is on the front iff no other row beats it
        beaten = any(
            o["fps"] >= row["fps"]
            and o["accuracy_integer"] >= row["accuracy_integer"]
            and (o["fps"], o["accuracy_integer"]) != (row["fps"], row["accuracy_integer"])
            for o in ok
        )
        assert (row in front) != beaten
    saved = read_table(folder / "pareto.csv")
    assert {r["point"] for r in saved} <= {r["point"] for r in ok}
    html = (folder / "report.html").read_text()
    assert all(row["label"] in html for row in front)
    details = json.loads(next((folder / "points").glob("*.json")).read_text())["details"]
    assert [layer["name"] for layer in details["layers"]][:1] == ["features.0"]


@pytest.mark.usefixtures("ray_dir")
def test_two_ray_workers_give_the_same_table(
    swept: tuple[SweepResult, Path], tmp_path: Path
) -> None:
    result, _ = swept
    on_ray = sweep(SPEC, tmp_path / "ray", workers=2)
    assert _without_times(on_ray.table) == _without_times(result.table)


def test_a_killed_sweep_reruns_only_the_missing_points(tmp_path: Path) -> None:
    fixed = {"mode": ["fixed"], "prune_method": ["magnitude"], "prune_target": ["", "macs=0.3"]}
    spec = tmp_path / "sweep.toml"
    compression = {**fixed, "bits": ["w8a8", "w4a8", "w4a4"]}
    spec.write_text(
        _toml({**SPEC, "compression": compression, "hardware": {"presets": ["edge16"]}})
    )
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "dopant"), "--quiet", "sweep", str(spec)]
    process = subprocess.Popen([*command, "-o", str(out)], stdout=subprocess.DEVNULL)
    points = out / "points"
    deadline = time.monotonic() + 240
    while len(list(points.glob("*.json"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it was killed"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = {p.stem: p.read_bytes() for p in points.glob("*.json")}
    assert 2 <= len(kept) < 6
    lines: list[str] = []
    rerun = sweep(spec, out, log=lines.append)
    assert f"6 point(s): {len(kept)} finished before, {6 - len(kept)} to run" in lines
    assert all(points.joinpath(f"{p}.json").read_bytes() == data for p, data in kept.items())
    assert all(row["status"] == "ok" for row in rerun.table) and len(rerun.table) == 6
    for row in rerun.table:
        if row["point"] in kept:
            assert row == json.loads(kept[row["point"]])["row"]


def test_a_widened_sweep_reuses_its_points_and_a_failing_point_is_a_row(tmp_path: Path) -> None:
    narrow: dict[str, Any] = {**SPEC, "compression": {"mode": ["fixed"], "bits": ["w8a8"]}}
    sweep(narrow, tmp_path)
    # 7,000 cycles: edge16 meets it by pruning (dense W8A8 LeNet-5 takes ~9,800 there), small8
    # cannot (its fastest pruned network takes more).
    budget = {"latency_budget": ["7000cycles"], "widths": [[8]], "prune_method": ["magnitude"]}
    wide = {
        **narrow,
        "compression": {**narrow["compression"], **budget, "mode": ["fixed", "codesign"]},
    }
    with pytest.raises(InputError, match=r"holds another sweep's results .*--resume"):
        sweep(wide, tmp_path)
    lines: list[str] = []
    result = sweep(wide, tmp_path, resume=True, log=lines.append)
    assert "4 point(s): 2 finished before, 2 to run" in lines
    failed = [r for r in result.table if r["status"] == "error"]
    assert [r["label"] for r in failed] == ["small8 codesign 7000cycles magnitude w8a8"]
    assert "below the fastest network these choices allow" in failed[0]["error"]
    assert failed[0]["cycles"] is None
    ok = [r for r in result.table if r["status"] == "ok"]
    assert len(ok) == 3 and ok[-1]["label"] == "edge16 codesign 7000cycles magnitude w8a8"
    calibration, _ = load_sample()
    loop = codesign(  # the same point, run directly
        load_pretrained("lenet5"),
        torch.from_numpy(calibration.x[:1]),
        target="edge16",
        calibration=calibration.x[:CALIBRATION],
        latency_budget="7000cycles",
        bits=False,
        method="magnitude",
        widths=(8,),
    )
    assert ok[-1]["cycles"] == loop.cycles <= 7000


def test_the_cli_refuses_a_folder_of_other_files_and_reports_again(
    swept: tuple[SweepResult, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = swept
    (tmp_path / "notes.txt").write_text("mine")
    spec = tmp_path / "sweep.toml"
    spec.write_text(_toml(SPEC))
    assert main(["sweep", str(spec), "-o", str(tmp_path)]) != 0
    assert "holds files that are not a sweep's" in capsys.readouterr().err
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert (folder / "report.html").is_file()
    assert main(["report", str(tmp_path)]) != 0
    assert "holds no finished sweep" in capsys.readouterr().err


def _toml(spec: dict[str, Any]) -> str:
    """The dict spec as TOML (strings, ints, lists and one level of tables suffice here)."""
    lines = []
    for table, values in spec.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def test_the_float_accuracy_is_torchs(swept: tuple[SweepResult, Path]) -> None:
    result, _ = swept
    _, test = load_sample()
    with torch.no_grad():
        logits = load_pretrained("lenet5")(torch.from_numpy(test.x[:EVAL]))
    expected = float((logits.argmax(1).numpy() == test.y[:EVAL]).mean())
    assert {row["accuracy_float"] for row in result.table} == {expected}


def test_a_model_file_and_data_are_read_beside_the_spec_and_hashed(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    shutil.copytree(examples / "images", tmp_path / "images")
    model = tmp_path / "mynet.py"
    model.write_text((examples / "mynet.py").read_text())
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        _toml(
            {
                "model": {"ref": "mynet.py:build", "input_shape": [1, 3, 32, 32]},
                "data": {"calibration": "images", "eval": "images"},
                "compression": {"mode": ["fixed"], "bits": ["w8a8"]},
                "hardware": {"presets": ["edge16"]},
            }
        )
    )
    first = sweep(spec, tmp_path / "out")
    assert [row["status"] for row in first.table] == ["ok"]
    # The file's bytes are part of the point's identity: another model is another point.
    model.write_text(model.read_text().replace("nn.Linear(16, num_classes)", "nn.Linear(16, 10)"))
    lines: list[str] = []
    second = sweep(spec, tmp_path / "out", log=lines.append)
    assert "1 point(s): 0 finished before, 1 to run" in lines
    assert second.table[0]["point"] != first.table[0]["point"]
