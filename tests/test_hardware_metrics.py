"""HardwareMetrics, the training-loop callback (codesign/training): its numbers equal a direct
compile-and-simulate of the same model; the model comes back as it went in (weights, batch-norm
statistics, each module's train/eval flag, the torch RNG); `every`, the CSV log and TensorBoard;
a model the target cannot take warns and training goes on, or raises before anything is
written, naming the layer either way; bad options are refused before any work."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dopant.backend.presets import preset
from dopant.codesign.training.logs import CSV_COLUMNS, CsvLog, HardwareSample
from dopant.codesign.training.metrics import HardwareMetrics
from dopant.compiler.driver import compile
from dopant.compiler.models.datasets import load_sample
from dopant.support.errors import DopantError, DopantWarning, InputError, UnsupportedOpsError

IMAGES = load_sample()[0].x[:16]
X = torch.from_numpy(IMAGES)


class Sin(nn.Module):
    """An op the frontend does not import."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class Net(nn.Module):
    """Conv-BN-ReLU twice, then a global pool and a linear classifier (any input size)."""

    def __init__(self, odd: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            Sin() if odd else nn.Identity(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _training(odd: bool = False) -> tuple[Net, torch.optim.Optimizer]:
    """A net mid-training: train mode, one SGD step taken (batch-norm statistics moved), its
    first batch norm frozen in eval mode, as a fine-tuning loop might leave it."""
    torch.manual_seed(0)
    model = Net(odd)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, optimizer)
    model.features[1].eval()
    return model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    labels = torch.arange(len(X)) % 10
    loss = nn.functional.cross_entropy(model(X), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    weights = {name: t.detach().clone() for name, t in model.state_dict().items()}
    return weights, {name: m.training for name, m in model.named_modules()}


def _assert_untouched(model: nn.Module, before: tuple[dict[str, Any], dict[str, bool]]) -> None:
    weights, modes = _snapshot(model)
    assert modes == before[1]
    assert weights.keys() == before[0].keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, before[0][name]), name


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def test_the_numbers_equal_a_direct_compile_and_simulate(tmp_path: Path) -> None:
    model, _ = _training()
    before, rng = _snapshot(model), torch.get_rng_state()
    sample = HardwareMetrics("edge16", X[:1], IMAGES, csv=tmp_path / "hw.csv")(model, 0)
    # values=True: the full compile, and its binary's outputs checked against the reference
    checked = HardwareMetrics("edge16", X[:1], IMAGES, csv=None, values=True)(model, 0)
    _assert_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng)

    stats = compile(model, X[:1], target="edge16", calibration=IMAGES).program.stats
    assert sample is not None and sample.ok and sample.bit_exact is None
    assert sample.stats is not None and sample.stats.to_dict() == stats.to_dict()
    assert sample.cycles == stats.total_cycles
    assert sample.energy_uj == stats.energy_pj["total"] / 1e6
    traffic = stats.traffic_bytes
    assert sample.dram_bytes == traffic["dram_read_bytes"] + traffic["dram_write_bytes"] > 0
    assert sample.macs == stats.macs
    assert sample.utilization == stats.utilization
    assert sample.fps == 500e6 / stats.total_cycles  # edge16 runs at 500 MHz
    assert sample.latency_us == pytest.approx(stats.total_cycles / 500)
    assert sample.overhead_seconds > 0
    assert checked is not None and checked.bit_exact is True
    assert checked.stats is not None and checked.stats.to_dict() == stats.to_dict()

    (row,) = _rows(tmp_path / "hw.csv")  # the CSV reads back exactly
    assert int(row["cycles"]) == sample.cycles and int(row["dram_bytes"]) == sample.dram_bytes
    assert float(row["energy_uj"]) == sample.energy_uj and float(row["fps"]) == sample.fps
    assert row["target"] == "edge16" and row["error"] == "" and row["bit_exact"] == ""


def test_every_other_epoch_goes_to_the_csv_and_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, optimizer = _training()
    lines: list[str] = []
    with HardwareMetrics(
        "edge16",
        X[:1],
        IMAGES[:4],
        every=2,
        csv=tmp_path / "hw.csv",
        tensorboard=tmp_path / "tb",
        log=lines.append,
    ) as hardware:
        samples = []
        for epoch in range(3):
            _step(model, optimizer)
            samples.append(hardware(model, epoch + 1))  # epochs 1, 2, 3: only 2 is measured
    assert [s is None for s in samples] == [True, False, True]
    measured = [s for s in samples if s is not None]
    assert hardware.samples == measured and measured[0].epoch == 2
    assert [int(r["epoch"]) for r in _rows(tmp_path / "hw.csv")] == [2]
    assert hardware.mean_overhead_seconds == measured[0].overhead_seconds
    assert "1 sample(s)" in hardware.summary() and "overhead per call" in hardware.summary()
    assert lines == [measured[0].line()] and lines[0].startswith("epoch 2: 'edge16' ")

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    cycles = events.Scalars("hardware/cycles")
    assert [(e.step, e.value) for e in cycles] == [(s.epoch, s.cycles) for s in measured]
    assert {"hardware/fps", "hardware/energy_uj", "hardware/dram_bytes"} <= set(
        events.Tags()["scalars"]
    )


class Writer:
    """What the callback needs of a SummaryWriter the training loop already writes to."""

    def __init__(self) -> None:
        self.written: list[tuple[str, object, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.written.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.written.append((tag, text, step))

    def close(self) -> None:
        self.closed = True


def test_a_layer_the_target_cannot_tile_warns_and_training_goes_on(tmp_path: Path) -> None:
    model, optimizer = _training()
    wide = np.random.default_rng(0).normal(size=(4, 1, 4, 2000)).astype(np.float32)
    small = preset("edge16").with_changes(name="edge16-1k", scratchpad_kib=1, scratchpad_banks=1)
    writer = Writer()
    with HardwareMetrics(
        small, torch.from_numpy(wide[:1]), wide, csv=tmp_path / "hw.csv", tensorboard=writer
    ) as hardware:
        before = _snapshot(model)
        with pytest.warns(
            DopantWarning, match=r'epoch 5 on .edge16-1k.*no tiling of "features\.0"'
        ):
            sample = hardware(model, 5)
    _assert_untouched(model, before)
    assert sample is not None and not sample.ok and sample.cycles is None
    assert writer.written == [
        ("hardware/error", sample.error, 5),
        ("hardware/overhead_seconds", sample.overhead_seconds, 5),
    ]
    assert not writer.closed  # the loop's writer stays open
    assert sample.error is not None and '"features.0"' in sample.error
    (row,) = _rows(tmp_path / "hw.csv")
    assert row["epoch"] == "5" and "features.0" in row["error"] and row["cycles"] == ""
    assert "1 failed" in hardware.summary()
    assert np.isfinite(_step(model, optimizer))  # training goes on


def test_an_unsupported_op_raises_naming_the_layer_before_anything_is_written(
    tmp_path: Path,
) -> None:
    model, _ = _training(odd=True)
    log = tmp_path / "hw.csv"
    hardware = HardwareMetrics("edge16", X[:1], IMAGES, csv=log, on_error="raise")
    before = _snapshot(model)
    with pytest.raises(UnsupportedOpsError, match=r"features\.7: aten\.sin"):
        hardware(model, 0)
    _assert_untouched(model, before)
    assert not log.exists() and hardware.samples == []


def test_append_keeps_the_rows_of_a_log_with_the_same_header(tmp_path: Path) -> None:
    path = tmp_path / "hw.csv"
    CsvLog(path).add(HardwareSample.failed(0, "edge16", "no, because\nof this", 0.5))
    CsvLog(path, append=True).add(HardwareSample.failed(1, "edge16", "again", 0.25))
    rows = _rows(path)
    assert [(r["epoch"], r["error"]) for r in rows] == [
        ("0", "no, because of this"),
        ("1", "again"),
    ]
    CsvLog(path).add(HardwareSample.failed(2, "edge16", "fresh", 0.1))  # append=False: replaced
    assert [r["epoch"] for r in _rows(path)] == ["2"]
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="its header is not the hardware metrics'"):
        CsvLog(path, append=True)


def test_tensorboard_without_the_package_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(InputError, match=r"pip install tensorboard .*dopant\[tensorboard\]"):
        HardwareMetrics("edge16", X[:1], IMAGES, csv=None, tensorboard=tmp_path / "tb")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": 0}, "every must be a positive number of epochs"),
        ({"on_error": "ignore"}, "on_error is 'warn' or 'raise'"),
        ({"method": "kmeans"}, "calibration method 'kmeans' is not known"),
        ({"target": "edge17"}, "unknown accelerator preset 'edge17'"),
        ({"calibration": IMAGES[:, :, :20]}, r"calibration samples have shape \[1, 20, 28\]"),
        ({"calibration": IMAGES[:0]}, "with N >= 1"),
        ({"calibration": [1, 2]}, "got list"),
        ({"example_inputs": (X[:1], X[:1])}, "one input tensor"),
        ({"example_inputs": X[:1].long()}, "float tensor with a batch axis"),
        ({"csv": "no-such-folder/hw.csv"}, "the folder 'no-such-folder' does not exist"),
        ({"weight_bits": 3}, "weight-bits=3 is not supported"),
        ({"overrides": ("conv1=w3",)}, "the weight bits of 'conv1=w3'"),
        ({"rounding_mode": "up"}, r"unknown quantize option\(s\) \['rounding_mode'\]"),
        ({"tensorboard": 7}, "tensorboard is a folder or a SummaryWriter"),
    ],
)
def test_bad_options_are_refused_before_any_work(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"target": "edge16", "example_inputs": X[:1], "calibration": IMAGES}
    arguments.update(options)
    with pytest.raises(DopantError, match=message):
        HardwareMetrics(**arguments)


def test_a_bad_epoch_is_refused() -> None:
    hardware = HardwareMetrics("edge16", X[:1], IMAGES, csv=None)
    with pytest.raises(InputError, match="epoch is a number from 0 on"):
        hardware(Net(), -1)
