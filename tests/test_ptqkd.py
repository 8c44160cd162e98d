"""Stage-by-stage PTQ with distillation on the shipped ResNet-8 (few images, so it stays fast):
the stage partition and its bad boundaries, stage training, the stitched network compiled bit
for bit, and `dopant ptq-kd` with two Ray workers giving the same weights as one process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign._ptqkd.stages import Stage, plan_stages
from dopant.codesign.finish import check_bit_exact
from dopant.codesign.ptqkd import (
    PtqKdResult,
    parse_bits,
    ptq_kd,
    stage_cuts,
    whole_network_kd,
)
from dopant.compiler.cli import main
from dopant.compiler.driver import CANONICAL_PIPELINE, compile_module, quantize_network
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.inputs import load_samples
from dopant.compiler.irio import ir_text
from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import QnnOp
from dopant.support.errors import DopantError, InputError

IMAGES = 16  # calibration = training images
# The recipe of the in-process run and of the CLI run with Ray: they must agree.
RECIPE = {"epochs": 3, "lr": 0.01, "batch_size": 4, "seed": 0, "method": "minmax"}


@dataclass
class Setup:
    model: nn.Module
    canonical: ModuleOp
    network: FakeQuantNetwork
    images: np.ndarray


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_sample()[0].x[:IMAGES]


@pytest.fixture(scope="module")
def setup(images: np.ndarray, zoo_ir: Callable[..., ModuleOp]) -> Setup:
    model = zoo.get("resnet8").build()  # the seeded weights of zoo_ir's IR
    canonical = zoo_ir("resnet8")
    run_pipeline(canonical, CANONICAL_PIPELINE)
    quantized = quantize_network(canonical, images, weight_bits=4, act_bits=4)
    return Setup(model, canonical, FakeQuantNetwork(quantized), images[:2])


def cuts(setup: Setup, stages: object) -> list[str]:
    found = stage_cuts(setup.model, setup.canonical, setup.network, stages, setup.images)  # type: ignore[arg-type]
    return [c.path for c in found]


def plan(setup: Setup, stages: object) -> list[Stage]:
    found = stage_cuts(setup.model, setup.canonical, setup.network, stages, setup.images)  # type: ignore[arg-type]
    return plan_stages(setup.network, found)


def test_the_default_stages_are_the_residual_stages(setup: Setup) -> None:
    stages = plan(setup, None)
    assert [(s.begins, s.ends) for s in stages] == [
        ("", "layer1"),
        ("layer1", "layer2"),
        ("layer2", ""),
    ]
    assert [s.layers for s in stages] == [
        ("conv1", "layer1.0.conv1", "layer1.0.conv2"),
        ("layer2.0.downsample.0", "layer2.0.conv1", "layer2.0.conv2"),
        ("layer3.0.downsample.0", "layer3.0.conv1", "layer3.0.conv2", "fc"),
    ]
    nodes = len(setup.network.program.nodes)
    assert [(s.start, s.stop) for s in stages] == [
        (0, stages[1].start),
        (stages[1].start, stages[2].start),
        (stages[2].start, nodes),
    ]
    # Each stage trains its own layers and steps; the step at each cut is shared, so frozen.
    trained = [name for s in stages for name in s.parameters]
    assert len(trained) == len(set(trained))
    assert set(dict(setup.network.named_parameters())) - set(trained) == {
        "steps.layer1_0_add",
        "steps.layer2_0_add_1",
    }
    assert [s.input_step for s in stages] == [None, "layer1_0_add", "layer2_0_add_1"]
    assert stages[1].input_range == (0, 15)  # ui4 after the block's ReLU


def test_a_number_of_stages_balances_the_macs(setup: Setup) -> None:
    assert cuts(setup, 1) == []
    assert cuts(setup, 2) == ["layer1"]  # 3.7M MACs, then 5.6M
    assert cuts(setup, 3) == ["layer1", "layer2"]
    assert cuts(setup, 5) == ["layer1", "layer2", "layer3", "avgpool"]
    with pytest.raises(InputError, match="6 stages need 5 cuts, but the network has only 4"):
        cuts(setup, 6)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("layer9", "stage boundary 'layer9' is not a module path of the network; its top-level"),
        (
            "layer1.0.conv1",
            r"stage boundary 'layer1.0.conv1' cuts a residual connection: 2 tensors cross it, "
            r"the output of conv1/requantize \(read by layer1.0/add\); the output of "
            r"layer1.0.conv1/requantize \(read by layer1.0.conv2\)",
        ),
        ("conv1", "stage boundary 'conv1': its output in torch differs from the tensor the IR"),
        ("layer1.0.bn1", "stage boundary 'layer1.0.bn1': no op of the quantized network"),
        ("fc", "stage boundary 'fc' is the end of the network"),
        ("layer2,layer1", "'layer1' ends at or before 'layer2'"),
        ("layer1,layer1.0", "'layer1.0' ends at or before 'layer1'"),
    ],
)
def test_a_bad_boundary_is_an_error_naming_its_path(
    setup: Setup, stages: str, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        plan(setup, stages)


@pytest.mark.parametrize("bits", ["w4", "w3a4", "4", "w8a16"])
def test_bad_bits_are_refused(bits: str) -> None:
    with pytest.raises(InputError, match=f"bits '{bits}' is not wXaY"):
        parse_bits(bits)


GOOD = np.zeros((2, 1, 28, 28), np.float32)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "epochs must be 0 or more, got -1"),
        ({"lr": 0.0}, "the learning rate must be positive, got 0.0"),
        ({"batch_size": 0}, "the batch size must be positive, got 0"),
        ({"stages": 0}, "stages must be at least 1, got 0"),
        ({"weight_clip": "max"}, "weight-clip 'max' is not known"),
        ({"workers": 0}, "workers must be a whole number of at least 1, got 0"),
        (
            {"calibration": np.zeros((2, 3, 28, 28))},
            r"calibration has shape \[2, 3, 28, 28\], but the model takes samples of shape "
            r"\[1, 28, 28\]",
        ),
        ({"train_images": [GOOD]}, "train_images must be an array or tensor of samples, got list"),
        ({"eval_data": (GOOD, np.zeros(2))}, "eval_data: labels have dtype float64"),
    ],
)
def test_bad_options_are_refused_before_any_work(options: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"calibration": GOOD, "train_images": GOOD}
    with pytest.raises(DopantError, match=message):
        ptq_kd(zoo.get("resnet8").build(), torch.from_numpy(GOOD[:1]), **{**data, **options})  # type: ignore[arg-type]


def test_the_baseline_takes_no_stages() -> None:
    with pytest.raises(InputError, match="whole_network_kd trains the network as one stage"):
        whole_network_kd(zoo.get("resnet8").build(), torch.from_numpy(GOOD[:1]), stages=2)


@pytest.fixture(scope="module")
def run(images: np.ndarray) -> PtqKdResult:
    test = load_sample()[1]
    model = load_pretrained("resnet8")
    return ptq_kd(
        model,
        torch.from_numpy(images[:1]),
        calibration=images,
        train_images=images,
        eval_data=(test.x[:32], test.y[:32]),
        **RECIPE,  # type: ignore[arg-type]
    )


def test_training_lowers_every_stage_loss(run: PtqKdResult) -> None:
    assert len(run.stages) == 3
    for report in run.stages:
        assert report.loss_after < report.loss_before, report
        assert len(report.epoch_losses) == RECIPE["epochs"]
        assert report.loss_after == min(report.epoch_losses)  # the best epoch is kept
    # The first stage reads the image in both measurements, so they agree: the task's loss
    # and the chained run are two computations of one number.
    first = run.stages[0]
    assert first.ptq_stitched == pytest.approx(first.loss_before, rel=1e-9)
    assert first.kd_stitched == pytest.approx(first.loss_after, rel=1e-9)
    assert set(run.accuracy) == {"float", "PTQ", "PTQ-KD, 3 stages"}
    assert set(run.logits_mse) == {"PTQ", "PTQ-KD, 3 stages"}


def test_the_stitched_network_keeps_the_paths_and_compiles_bit_exact(
    run: PtqKdResult, images: np.ndarray
) -> None:
    def paths(module: ModuleOp) -> list[str]:
        return [op.path.data for op in module.walk() if isinstance(op, QnnOp)]

    assert paths(run.quantized) == paths(run.ptq)
    assert ir_text(run.quantized) != ir_text(run.ptq)  # the weights moved
    compiled = compile_module(run.quantized, target="edge16")
    assert compiled.binary == run.binary
    check_bit_exact(compiled, run.quantized, images[-4:])


def test_the_table_and_the_saved_report(run: PtqKdResult, tmp_path: Path) -> None:
    table = run.table()
    assert "PTQ-KD, 3 stages at w4a4: 3 epoch(s) on 16 images" in table
    assert "\n2     layer1    layer2" in table
    files = run.save(tmp_path)
    report = json.loads(files["report"].read_text())
    assert [s["ends"] for s in report["stages"]] == ["layer1", "layer2", "output"]
    assert report["stages"][0]["loss_after"] == run.stages[0].loss_after
    assert (tmp_path / "model.dpb").read_bytes() == run.binary


@pytest.mark.usefixtures("ray_dir")
def test_the_cli_with_two_ray_workers_gives_the_weights_of_one_process(
    run: PtqKdResult, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "images.npz"
    np.savez(data, x=(images[:, 0] * 255).round().astype(np.uint8))
    assert np.array_equal(load_samples(str(data), (1, 28, 28)).x, images)
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(
        [
            "--quiet",
            "ptq-kd",
            "zoo:resnet8",
            "--bits",
            "w4a4",
            "--workers",
            "2",
            "--calibration",
            str(data),
            "--epochs",
            str(RECIPE["epochs"]),
            "--lr",
            str(RECIPE["lr"]),
            "--batch-size",
            str(RECIPE["batch_size"]),
            "--method",
            str(RECIPE["method"]),
            "-o",
            str(out),
        ]
    )
    printed, errors = capsys.readouterr()
    assert code == 0, errors
    print(f"ptq-kd with 2 Ray workers: {time.perf_counter() - start:.1f} s")
    assert (out / "quantized.mlir").read_text() == ir_text(run.quantized)
    assert (out / "model.dpb").read_bytes() == run.binary
    assert json.loads((out / "stages.json").read_text())["workers"] == 2
    assert "stage from      to" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "ray://127.0.0.1:1"], "cannot reach the Ray cluster at 'ray://127.0.0.1:1'"),
        (["--bits", "w4"], "bits 'w4' is not wXaY"),
        (["--stages", "0"], "--stages must be at least 1, got 0"),
        (["--limit", "-1"], "--epochs and --limit must be 0 or more"),
        (["-o", "taken"], "-o taken is a file; give a folder for the results"),
    ],
)
def test_the_cli_refuses_bad_options_at_once(
    extra: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("")
    start = time.perf_counter()
    code = main(["ptq-kd", "zoo:resnet8", "--calibration", "sample", "-o", "out", *extra])
    assert code == 1
    assert message in capsys.readouterr().err
    assert time.perf_counter() - start < 5
