"""Progressive compression of the shipped LeNet-5, end to end: per-stage records (drops, the start
of a stage of unchanged widths, pruning), the final network against the integer reference and
the compiled binary, and a run interrupted after two stages and resumed from its saved stages,
equal to one never interrupted; a saved run of another schedule, options or model is refused."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dopant.codesign.finish import integer_top1
from dopant.codesign.progressive import ProgressiveResult, progressive
from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.irio import ir_text
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.support.errors import InputError

# Stage 1 prunes (its plan is saved), stage 2 keeps its widths (it starts where stage 1 ended),
# stage 3 lowers them; the interrupted run stops after stage 2.
SCHEDULE = "w8a8+macs=0.3,w8a8,w4a4"


@dataclass(frozen=True)
class Runs:
    whole: ProgressiveResult
    resumed: ProgressiveResult
    saved: Path  # the folder of the interrupted run, resumed
    options: dict[str, Any]


def _options() -> dict[str, Any]:
    train, test = load_sample()
    return {
        "model": load_pretrained("lenet5"),
        "example_inputs": torch.from_numpy(test.x[:1]),
        "train_data": (train.x[:128], train.y[:128]),
        "eval_data": (test.x[:200], test.y[:200]),
        "calibration_method": "minmax",  # the fastest; mse is the default
        "epochs_per_stage": 1,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("progressive")
    options = _options()
    whole = progressive(schedule=SCHEDULE, out_dir=folder / "whole", **options)
    saved = folder / "interrupted"
    progressive(schedule=SCHEDULE.rsplit(",", 1)[0], out_dir=saved, **options)
    resumed = progressive(schedule=SCHEDULE, out_dir=saved, resume=True, **options)
    return Runs(whole, resumed, saved, options)


def test_each_stage_records_its_accuracy_drop_macs_and_cycles(runs: Runs) -> None:
    whole = runs.whole
    records = whole.records
    assert [r.stage for r in records] == ["w8a8+macs=0.3", "w8a8+macs=0.3", "w4a4+macs=0.3"]
    assert whole.float_top1 is not None
    before = whole.float_top1
    for r in records:
        assert r.top1 is not None and r.drop == pytest.approx(before - r.top1)
        assert r.epochs == 1 and len(r.losses) == 1
        before = r.top1
    dense_macs = 416_520  # LeNet-5 at 28x28 (the README's zoo table)
    assert records[0].macs <= 0.7 * dense_macs
    assert records[0].macs == records[1].macs == records[2].macs
    assert records[2].cycles < records[1].cycles  # 4-bit lanes fuse four MACs
    # Unchanged widths: stage 2 starts as exactly the network stage 1 ended with.
    assert records[1].top1_start == records[0].top1
    assert records[1].carried == "weights of 5/5 layers, 5 weight and 6/6 activation steps"
    assert records[0].carried == ""


def test_the_final_network_is_the_integer_reference_and_the_binary(runs: Runs) -> None:
    whole = runs.whole
    assert integer_top1(whole.quantized, runs.options["eval_data"]) == whole.top1
    assert whole.cycles == whole.records[-1].cycles  # the binary's, as the oracle measured
    images = runs.options["eval_data"][0][:20]
    expected = BatchedRunner(whole.quantized).run(images)
    assert np.array_equal(whole.compiled.run(images).outputs[0], expected)


def test_a_resumed_run_equals_one_never_interrupted(runs: Runs) -> None:
    whole, resumed = runs.whole, runs.resumed
    assert (whole.resumed, resumed.resumed) == (0, 2)
    for a, b in zip(whole.records, resumed.records, strict=True):
        assert replace(a, train_seconds=0.0) == replace(b, train_seconds=0.0)
    assert ir_text(resumed.quantized) == ir_text(whole.quantized)
    assert resumed.compiled.binary == whole.compiled.binary
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stage = runs.saved / "stage-1"
    files = {"record.json", "float.pt", "network.pt", "quantized.mlir", "plan.json"}
    assert {p.name for p in stage.iterdir()} == files
    assert not (runs.saved / "stage-2" / "plan.json").exists()  # stage 2 pruned nothing more


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"schedule": "w8a8+macs=0.3,w4a8,w4a4"},
            "stage-2 finished stage 2 of the schedule w8a8+macs=0.3,w8a8+macs=0.3, not of "
            "w8a8+macs=0.3,w4a8+macs=0.3,w4a4+macs=0.3",
        ),
        ({"lr": 1e-4}, "stage-1 was saved by a different run: lr 0.001 (now 0.0001)"),
    ],
)
def test_a_saved_run_of_another_schedule_or_options_is_refused(
    runs: Runs, change: dict[str, Any], message: str
) -> None:
    options = {**runs.options, "schedule": SCHEDULE, **change}
    with pytest.raises(InputError) as error:
        progressive(out_dir=runs.saved, resume=True, **options)
    assert message in str(error.value)
    assert "give another output folder or start over without resume" in str(error.value)


def test_a_saved_run_of_another_model_is_refused(runs: Runs) -> None:
    model = load_pretrained("lenet5")
    with torch.no_grad():
        model.classifier[5].bias.add_(0.01)
    options = {**runs.options, "model": model}
    with pytest.raises(InputError, match="a different run: another model"):
        progressive(schedule=SCHEDULE, out_dir=runs.saved, resume=True, **options)
