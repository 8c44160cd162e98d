"""Latency tables (`dopant.codesign.LatencyTable`): per-row cycles measured on single-op
programs, checked against layers compiled on their own through the whole compiler, the
staircase in channel counts, the rows of ResNet-8, the disk cache and the errors."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.presets import preset
from dopant.codesign import LatencyTable, TableRow
from dopant.codesign._latency import cache
from dopant.compiler.driver import compile_module, latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.support.errors import DopantWarning, InputError

ZooIR = Callable[..., ModuleOp]


def _ir(model: nn.Module, shape: tuple[int, ...]) -> ModuleOp:
    torch.manual_seed(0)
    return import_model(model.eval(), torch.zeros(shape))


def _compiled_cycles(model: nn.Module, shape: tuple[int, ...], w_bits: int, a_bits: int) -> int:
    """The whole-compiler reference: a one-layer torch model imported, calibrated on data in
    [0, 1), quantized (weights at w_bits, input and output at a_bits), compiled for edge16 and
    timed from its binary."""
    sample = torch.rand((4, *shape[1:]), generator=torch.Generator().manual_seed(1))
    compiled = compile_module(
        _ir(model, shape),
        target="edge16",
        calibration=sample.numpy(),
        weight_bits=w_bits,
        act_bits=a_bits,
        output_bits=a_bits,
    )
    return compiled.program.stats.total_cycles


class _Twice(nn.Module):
    """relu(x + x): a residual add with both operands at one shape and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + x)


# (network, its input, row, in kept, out kept, w_bits, a_bits, the one layer alone, its input)
CASES = {
    "conv with bias, stride 2": (
        nn.Sequential(nn.Conv2d(8, 40, 3, 2, 1), nn.ReLU(), nn.Conv2d(40, 24, 1)),
        (1, 8, 16, 16),
        "0",
        8,
        24,
        4,
        8,
        nn.Sequential(nn.Conv2d(8, 24, 3, 2, 1), nn.ReLU()),
        (1, 8, 16, 16),
    ),
    "depthwise with relu6": (
        nn.Sequential(nn.Conv2d(3, 48, 1), nn.ReLU6(), nn.Conv2d(48, 48, 3, 1, 1, groups=48)),
        (1, 3, 12, 12),
        "2",
        32,
        32,
        8,
        4,
        nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32)),
        (1, 32, 12, 12),
    ),
    "linear after a flatten": (
        nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Flatten(), nn.Linear(40 * 16, 10)),
        (1, 3, 6, 6),
        "3",
        16 * 16,
        10,
        2,
        8,
        nn.Sequential(nn.Linear(16 * 16, 10)),
        (1, 16 * 16),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_entry_is_the_layer_compiled_alone_through_the_whole_compiler(
    case: str, tmp_path: Path
) -> None:
    network, shape, row, kept_in, kept_out, w, a, alone, alone_shape = CASES[case]
    table = LatencyTable.of(_ir(network, shape), "edge16", cache_dir=tmp_path)
    reference = _compiled_cycles(alone, alone_shape, w, a)
    assert table.cycles(row, kept_in, kept_out, w, a) == reference


def test_a_residual_add_entry_is_an_add_compiled_alone(zoo_ir: ZooIR, tmp_path: Path) -> None:
    table = LatencyTable.of(zoo_ir("resnet8"), "edge16", cache_dir=tmp_path)
    reference = _compiled_cycles(_Twice(), (1, 16, 28, 28), 8, 4)
    assert table.cycles("layer1.0/add", 16, 16, a_bits=4) == reference


def test_the_staircase_in_output_channels(tmp_path: Path) -> None:
    """METHODS.md, "Structured pruning tools and latency": on a weight-stationary array each
    fold holds a rows x cols block of the weights (rows: input channels x kernel positions,
    cols: output channels) and streams every output pixel through it, so compute is
    ceil(9 C_in / 16) x ceil(C_out / 16) folds x 784 pixels on edge16 (16x16). 64 -> 50 output
    channels keeps ceil(50/16) = 4 column folds: nothing saved beyond a few store cycles.
    64 -> 48 drops to 3: a quarter of the folds. Input channels 64 -> 50 take the row folds
    from ceil(576/16) = 36 to ceil(450/16) = 29: 19.4% fewer."""
    ir = _ir(nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU()), (1, 64, 28, 28))
    table = LatencyTable.of(ir, "edge16", cache_dir=tmp_path)
    full = table.cycles("0", 64, 64)
    within_one_width = 1 - table.cycles("0", 64, 50) / full
    across_a_width = 1 - table.cycles("0", 64, 48) / full
    fewer_inputs = 1 - table.cycles("0", 50, 64) / full
    assert within_one_width < 0.005  # measured: 115,748 -> 115,449 cycles, 0.26%
    assert 0.24 < across_a_width < 0.26  # measured: 87,204 cycles, 24.7%
    assert 0.18 < fewer_inputs < 0.21  # measured: 93,574 cycles, 19.2%


def test_the_rows_and_keys_of_resnet8(zoo_ir: ZooIR, tmp_path: Path) -> None:
    module = zoo_ir("resnet8")
    sample = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    quantized = quantize_network(module, sample)
    names = [layer.name for layer in latency(quantized, "edge16").layers]
    before = ir_text(module)
    table = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    assert ir_text(module) == before  # the caller's IR is left as it was
    assert [r.name for r in table.rows] == names
    from_quantized = LatencyTable.of(quantized, "edge16", cache_dir=tmp_path)
    assert from_quantized.rows == table.rows

    rows = {r.name: r for r in table.rows}
    assert rows["layer1.0.conv1"] == TableRow(
        "layer1.0.conv1",
        "conv2d",
        ("layer1.0.conv1", "in"),
        ("layer1.0.conv1", "out"),
        16,
        16,
        (),
        shares_input=("layer1.0.conv1", "layer2.0.downsample.0", "layer2.0.conv1"),
    )
    # quantize stores a value at the widest a_bits of the layers reading it, an add passing
    # its readers' demand back to its operands: layer1.0.conv1's input is also the skip
    # operand of layer1.0/add, whose result the next block's two convs read.
    both = ("layer2.0.downsample.0", "layer2.0.conv1")
    assert rows["layer2.0.conv1"].shares_input == rows["layer2.0.downsample.0"].shares_input == both
    add = rows["layer1.0/add"]
    assert (add.kind, add.in_key, add.out_key) == ("vector", None, ("layer1.0.conv2", "out"))
    assert add.readers == both
    pool = rows["avgpool"]
    assert (pool.out_key, pool.readers, pool.full_out) == (("layer3.0.conv2", "out"), ("fc",), 64)
    assert (rows["fc"].full_in, rows["fc"].full_out) == (64, 10)
    assert table.counts("layer3.0.conv1") == ((16, 32), (16, 32, 48, 64))
    assert LatencyTable.of(module, "edge16", step=8, cache_dir=tmp_path).counts("fc") == (
        (8, 16, 24, 32, 40, 48, 56, 64),
        (8, 10),
    )


def test_predict_on_dense_resnet8_against_the_measured_network(
    zoo_ir: ZooIR, tmp_path: Path
) -> None:
    module = zoo_ir("resnet8")
    table = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    sample = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    measured = latency(quantize_network(module, sample), "edge16").total_cycles
    predicted = table.predict()
    # Each row alone pays its first loads and last stores, which the network overlaps with
    # its neighbours: the sum over-predicts (52,019 vs 47,353 cycles when this was written).
    print(f"ResNet-8 edge16 W8A8: predicted {predicted}, measured {measured}")
    assert measured < predicted < 1.3 * measured

    # The vector rows that fc reads through (the last add, the pool) follow fc's a_bits.
    four = table.predict(bits={"fc": (8, 4)})
    changed = ("fc", "layer3.0/add_2", "avgpool")
    delta = sum(
        table.cycles(name, table.row(name).full_in, table.row(name).full_out, 8, a) * sign
        for name in changed
        for a, sign in ((4, 1), (8, -1))
    )
    assert four - predicted == delta
    # layer2.0.conv1 shares its input with the downsample conv, still at 8 bits: no change.
    assert table.predict(bits={"layer2.0.conv1": (8, 4)}) == predicted
    pruned = {("layer3.0.conv1", "out"): 32, ("layer3.0.conv2", "in"): 32}
    assert table.predict(pruned) - predicted == (
        table.cycles("layer3.0.conv1", 32, 32)
        + table.cycles("layer3.0.conv2", 32, 64)
        - table.cycles("layer3.0.conv1", 32, 64)
        - table.cycles("layer3.0.conv2", 64, 64)
    )


def test_entries_come_back_from_disk_per_machine_and_version(
    zoo_ir: ZooIR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = zoo_ir("resnet8")
    first = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    asked = [("layer3.0.conv2", 48, 32, 4, 8), ("avgpool", 64, 32, 8, 4)]
    values = [first.cycles(*query) for query in asked]
    assert first.measurements == 2
    assert first.cache_file is not None and first.cache_file.parent == tmp_path
    stored = json.loads(first.cache_file.read_text())  # JSON, no pickle
    assert stored["target_name"] == "edge16" and len(stored["entries"]) == 2

    second = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    assert [second.cycles(*query) for query in asked] == values
    assert second.measurements == 0

    other_machine = LatencyTable.of(module, "small8", cache_dir=tmp_path)
    other_machine.cycles(*asked[0])
    assert other_machine.measurements == 1 and other_machine.cache_file != first.cache_file

    monkeypatch.setattr(cache, "dopant_version", lambda: "99.0")
    other_version = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    assert other_version.cycles(*asked[0]) == values[0]
    assert other_version.measurements == 1 and other_version.cache_file != first.cache_file


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(zoo_ir: ZooIR, tmp_path: Path) -> None:
    module = zoo_ir("resnet8")
    first = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    value = first.cycles("fc", 64, 10)
    assert first.cache_file is not None
    first.cache_file.write_text('{"format": "dopant-latency-table", "entries": [')
    with pytest.warns(DopantWarning, match="cache .* is unusable: it is not JSON"):
        again = LatencyTable.of(module, "edge16", cache_dir=tmp_path)
    assert again.cycles("fc", 64, 10) == value and again.measurements == 1
    assert len(json.loads(first.cache_file.read_text())["entries"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LatencyTable.of(module, "edge16", cache_dir=tmp_path).cycles("fc", 64, 10) == value


def test_bad_counts_and_widths_name_the_row_and_what_it_takes(
    zoo_ir: ZooIR, tmp_path: Path
) -> None:
    module = zoo_ir("resnet8")
    narrow = preset("edge16").with_changes(act_bits=(4, 8))
    table = LatencyTable.of(module, narrow, cache_dir=tmp_path)
    with pytest.raises(
        InputError,
        match=r"row 'layer3.0.conv2' cannot keep 0 input channels; give from 1 to 64 \(its grid: 16, 32, 48, 64\)",
    ):
        table.cycles("layer3.0.conv2", 0, 64)
    with pytest.raises(InputError, match="cannot keep 65 output channels"):
        table.cycles("layer3.0.conv2", 64, 65)
    with pytest.raises(
        InputError, match="row 'fc': target 'edge16' has no 3-bit weights; choose one of 2, 4, 8"
    ):
        table.cycles("fc", 64, 10, w_bits=3)
    with pytest.raises(InputError, match="has no 2-bit activations; choose one of 4, 8"):
        table.cycles("avgpool", 64, 64, a_bits=2)
    with pytest.raises(InputError, match=r"no row 'layer9'; its rows are conv1, layer1\.0\.conv1"):
        table.cycles("layer9", 1, 1)
    with pytest.raises(InputError, match=r"must be an integer, got 1\.5"):
        table.cycles("fc", 1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="bits names conv9, which are not layers"):
        table.predict(bits={"conv9": (8, 8)})
    with pytest.raises(InputError, match="step must be a positive number"):
        LatencyTable.of(module, "edge16", step=0)
    flatten = CASES["linear after a flatten"]
    linear = LatencyTable.of(_ir(flatten[0], flatten[1]), "edge16", cache_dir=tmp_path)
    assert linear.row("3").in_unit == 16 and linear.counts("3") == ((256, 512, 640), (10,))
    with pytest.raises(InputError, match="give a multiple of 16 from 16 to 640"):
        linear.cycles("3", 100, 10)
    depthwise = CASES["depthwise with relu6"]
    tied = LatencyTable.of(_ir(depthwise[0], depthwise[1]), "edge16", cache_dir=tmp_path)
    assert tied.row("2").tied and tied.counts("2") == ((16, 32, 48), (16, 32, 48))
    with pytest.raises(InputError, match="depthwise conv: it keeps 1 output channel"):
        tied.cycles("2", 32, 16)


def test_fill_measures_each_signature_once(tmp_path: Path) -> None:
    network = nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    narrow = preset("edge16").with_changes(weight_bits=(4, 8), act_bits=(8,))
    table = LatencyTable.of(_ir(network, (1, 3, 8, 8)), narrow, cache_dir=tmp_path)
    assert [r.name for r in table.rows] == ["0", "2", "4", "6"]
    table.fill()
    # conv 0: 1 x 2 counts, conv 2 and conv 4 share 2 x 2, each at w4a8 and w8a8; the pool: 2
    assert table.measurements == (2 + 4) * 2 + 2
    table.fill()
    assert table.measurements == (2 + 4) * 2 + 2
    table.fill([(4, 8)])
    assert table.measurements == (2 + 4) * 2 + 2


def test_a_row_that_cannot_run_alone_is_fixed_at_its_network_cycles(tmp_path: Path) -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], 1)

    table = LatencyTable.of(_ir(Branches(), (1, 3, 8, 8)), "edge16", cache_dir=tmp_path)
    concat = table.rows[-1]
    assert (concat.kind, concat.fixed, concat.out_key) == ("vector", True, None)
    assert table.counts(concat) == ((32,), (32,))
    network = latency(table._ir, "edge16")
    assert table.cycles(concat, 32, 32) == network.layers[-1].added_cycles
    with pytest.raises(InputError, match="is fixed"):
        table.cycles(concat, 16, 16)
    assert table.predict() == sum(table.cycles(r, r.full_in, r.full_out) for r in table.rows)
