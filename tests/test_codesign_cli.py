"""`dopant codesign` end to end on the shipped LeNet-5, and the selection replayed from text with
`dopant opt ... -p 'select-compression,prune-channels'`; one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dopant.backend.config_attr import module_target
from dopant.codesign.attrs import read_inputs
from dopant.codesign.choose import BudgetProblem, Correction
from dopant.codesign.latency_table import LatencyTable
from dopant.compiler.cli import main
from dopant.compiler.irio import read_ir
from dopant.compiler.models.datasets import load_sample
from dopant.dialects.qnn import BitsAttr, Conv2DOp, LinearOp
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PLAN_ATTR, PruningPlan


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("codesign")
    out = folder / "out"
    sample = load_sample()[0]  # the first 128 shipped training images, with their labels
    data = folder / "calibration.npz"
    np.savez(data, x=(sample.x[:128, 0] * 255).round().astype(np.uint8), y=sample.y[:128])
    code = main(
        [
            "--quiet",
            "codesign",
            "zoo:lenet5",
            "--latency-budget",
            "0.6x",
            "--widths",
            "4,8",  # 2 bits too would triple the latency table's measurements
            "--calibration",
            str(data),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    return out, (out / "report.json").read_text()


def test_codesign_writes_the_binary_ir_plan_bits_and_report(run: tuple[Path, str]) -> None:
    out, text = run
    report = json.loads(text)
    for name in ("model.dpb", "selected.mlir", "quantized.mlir", "bits.json", "plan.json"):
        assert (out / name).stat().st_size > 0, name
    bits = json.loads((out / "bits.json").read_text())
    assert set(bits) == {"features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"}
    budget = report["budget_cycles"]
    assert budget == int(0.6 * report["dense_w8a8_cycles"])
    assert 0.98 * budget <= report["cycles"] <= budget
    assert report["rounds"][-1]["measured_cycles"] == report["cycles"]
    assert report["converged"] is True


def test_a_selection_runs_from_text(run: tuple[Path, str], tmp_path: Path) -> None:
    """The pass on the saved IR picks what the selector picks in Python for the same inputs
    (the saliency, sensitivity, scale and budget the IR records), at a budget of our own."""
    out, text = run
    budget = int(0.75 * json.loads(text)["dense_w8a8_cycles"])
    replayed = tmp_path / "replayed.mlir"
    pipeline = f"select-compression{{latency-budget-cycles={budget}}}"
    assert main(["opt", str(out / "selected.mlir"), "-p", pipeline, "-o", str(replayed)]) == 0
    module = read_ir(str(replayed))

    selected = read_ir(str(out / "selected.mlir"))
    inputs = read_inputs(selected)
    problem = BudgetProblem(
        selected,
        coupling_groups(selected),
        LatencyTable.of(selected, module_target(selected), step=inputs.step),
        scores=inputs.scores,
        sensitivity=inputs.sensitivity,
        widths=inputs.widths,
        bits_weight=inputs.bits_weight,
    )
    expected = problem.solve(float(budget), Correction(inputs.scale))
    assert expected.predicted_cycles <= budget

    attr = module.attributes.get(PLAN_ATTR)
    kept = PruningPlan.from_attr(attr, coupling_groups(module)).keep() if attr else {}  # type: ignore[arg-type]
    assert kept == (expected.plan.keep() if expected.plan else {})
    for op in module.walk():
        if isinstance(op, Conv2DOp | LinearOp):
            chosen = op.attributes["bits"]
            assert isinstance(chosen, BitsAttr)
            assert (chosen.weight.data, chosen.act.data) == expected.bits[op.path.data]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency-budget", "fast"], "'fast' is not understood; write it as 40000cycles"),
        (["--latency-budget", "0.5x", "--no-prune", "--no-bits"], "leave nothing to choose"),
        (["--latency-budget", "0.5x", "--target", "edge17"], "edge17"),
        (["--latency-budget", "0.5x", "--widths", "3,8"], "--widths=3 is not supported"),
    ],
)
def test_bad_options_fail_in_one_line_before_work(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["codesign", "zoo:lenet5", "--calibration", "sample", "-o", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1, err
