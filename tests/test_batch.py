"""Batches: a program compiled for one image runs N images at once (`Program.run` with a leading
N axis), each image bit-exact to its run alone, for a zoo model with branches and a small CNN on
both dataflows, checked against batch-1 runs and the integer reference interpreter; per-image
weights; chunking; the statistics (one image's, and N times its cycles); the input errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from dopant.backend.asm import parse_assembly
from dopant.backend.presets import preset
from dopant.compiler.driver import CompiledModel, compile_module
from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.runtime import simulator
from dopant.runtime.program import LayerRange, Program, RunResult, TensorDesc
from dopant.support.errors import InputError

SMALL8 = preset("small8")


class SmallNet(nn.Module):
    """Conv, pool, residual add, linear: a little of every engine, quick to compile."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.more = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y = self.pool(y + self.more(y))
        return self.fc(torch.flatten(y, 1))


@functools.cache
def compiled(name: str, target: str, dataflow: str = "") -> tuple[CompiledModel, np.ndarray]:
    """`name` (a zoo model or "small") compiled W8A8 for `target`, and 4 images to run."""
    torch.manual_seed(0)
    model = SmallNet() if name == "small" else zoo.get(name).build()
    shape = (1, 2, 6, 6) if name == "small" else zoo.get(name).input_shape
    x = np.random.default_rng(1).uniform(0, 1, (4, *shape[1:])).astype(np.float32)
    module = import_model(model.eval(), torch.from_numpy(x[:1]))
    options = {"dataflow": dataflow} if dataflow else {}
    return compile_module(module, target=target, calibration=x, **options), x


def assert_same(batch: RunResult, singles: list[RunResult]) -> None:
    """Image i of `batch` is, bit for bit, the run of image i alone."""
    assert batch.batch == len(singles)
    for i, one in enumerate(singles):
        assert one.batch == 1
        for got, want in zip(batch.outputs, one.outputs, strict=True):
            assert got.dtype == want.dtype and np.array_equal(got[i : i + 1], want)
        for got, want in zip(batch.raw_outputs, one.raw_outputs, strict=True):
            assert got.dtype == want.dtype and np.array_equal(got[i : i + 1], want)
        assert batch.values.keys() == one.values.keys()
        for name, value in one.values.items():
            assert np.array_equal(batch.values[name][i : i + 1], value), name


def test_a_zoo_model_with_branches_runs_four_images_as_four_single_runs() -> None:
    result, x = compiled("resnet8", "large32")
    program = result.program
    batch = program.run(x, values=True)
    assert batch.outputs[0].shape == (4, *program.outputs[0].shape[1:])
    assert_same(batch, [program.run(x[i : i + 1], values=True) for i in range(4)])
    # and the integer reference interpreter, independently of the simulator
    expected = BatchedRunner(result.ir("quantized")).run(x)
    np.testing.assert_array_equal(batch.outputs[0], expected)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_a_small_model_runs_a_batch_bit_exact_on_both_dataflows(dataflow: str) -> None:
    result, x = compiled("small", "small8", dataflow)
    program = result.program
    batch = program.run(x, values=True)
    assert_same(batch, [program.run(x[i : i + 1], values=True) for i in range(4)])
    np.testing.assert_array_equal(batch.outputs[0], BatchedRunner(result.ir("quantized")).run(x))
    raw = simulator.quantize_inputs(program, [x])
    assert_same(
        program.run_raw(raw[0].reshape(x.shape)), [program.run(x[i : i + 1]) for i in range(4)]
    )


def test_the_chunk_size_changes_no_value() -> None:
    result, x = compiled("small", "small8", "ws")
    program = result.program
    raw = simulator.quantize_inputs(program, [x])
    whole = simulator.simulate(program, raw, True, program.order)
    assert whole.values and whole.batch == 4
    for chunk in (1, 3):
        part = simulator.simulate(program, raw, True, program.order, chunk)
        assert all(
            np.array_equal(a, b) for a, b in zip(part.raw_outputs, whole.raw_outputs, strict=True)
        )
        assert all(np.array_equal(part.values[k], v) for k, v in whole.values.items())


def test_stats_are_one_images_and_the_total_is_n_times_its_cycles() -> None:
    result, x = compiled("small", "small8", "os")
    one, four = result.program.run(x[:1]), result.program.run(x)
    assert one.stats == four.stats and one.stats.total_cycles > 0
    assert (one.total_cycles, four.total_cycles) == (
        one.stats.total_cycles,
        4 * one.stats.total_cycles,
    )


# ---- hand-written programs --------------------------------------------------------------------


def program(code: str, inputs: list[TensorDesc], outputs: list[TensorDesc]) -> Program:
    instructions = tuple(parse_assembly(code))
    return Program(
        config_hash=SMALL8.stable_hash(),
        config=SMALL8.to_dict(),
        instructions=instructions,
        segments=(),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        layers=(LayerRange("all", 0, len(instructions)),),
        dram_bytes=256,
    )


def test_weights_that_differ_between_images_are_each_images_own() -> None:
    # The weights are an input, so each image multiplies by its own: y = w @ x per image.
    prog = program(
        """
        load dram=0 local=0 d=3 h=1 w=2 sd=2 sh=2 sw=1 bits=8 signed=1 src_h=1 src_w=2 signal=0b1
        load dram=16 local=100 d=1 h=1 w=6 sw=1 bits=8 signed=1 src_h=1 src_w=6 signal=0b10
        conv wait=0b11 c_in=3 ih=1 iw=2 wgt=100 n=2 groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow=2 w_bits=8 a_bits=8
        """,
        [
            TensorDesc("x", (1, 3, 2), 0, 8, True, 1.0, 0),
            TensorDesc("w", (1, 2, 3), 16, 8, True, 1.0, 0),
        ],
        [],
    )
    rng = np.random.default_rng(3)
    x, w = rng.integers(-128, 128, (5, 3, 2)), rng.integers(-128, 128, (5, 2, 3))
    # The sums are read from the accumulator: storing them would requantize them.
    mem = simulator.initial_memories(prog, simulator.check_raw_inputs(prog, [x, w]))
    simulator.execute(prog.instructions, mem)
    np.testing.assert_array_equal(mem.acc[:, :4].reshape(5, 2, 2), w @ x)


def _two_inputs() -> Program:
    return program(
        """
        load dram=0 local=0 d=1 h=1 w=3 sw=1 bits=8 signed=1 src_h=1 src_w=3 signal=0b1
        store wait=0b1 dram=32 d=1 h=1 w=3 sw=1 bits=8 signed=1
        """,
        [TensorDesc("x", (1, 3), 0, 8, True, 0.5, 0), TensorDesc("y", (1, 3), 8, 8, True, 0.5, 0)],
        [TensorDesc("out", (1, 3), 32, 8, True, 0.5, 0)],
    )


def test_a_batch_gives_each_output_a_leading_n_and_copies_each_image() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    result = _two_inputs().run(x, -x)
    assert result.batch == 4 and result.outputs[0].shape == (4, 3)
    np.testing.assert_array_equal(result.outputs[0], x)
    single = _two_inputs().run(x[:1], x[:1])
    assert single.batch == 1 and single.outputs[0].shape == (1, 3)


def test_inputs_holding_different_batches_are_refused_naming_the_input() -> None:
    with pytest.raises(
        InputError,
        match=r"input 'y' holds 2 image\(s\) \(shape \[2, 3\]\) but input 'x' holds 4 "
        r"\(shape \[4, 3\]\); give every input the same batch",
    ):
        _two_inputs().run(np.zeros((4, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="input 'y' holds 1 image"):
        _two_inputs().run_raw(np.zeros((4, 3), np.int8), np.zeros((1, 3), np.int8))


def test_a_wrong_shape_names_the_declared_shape_and_the_batched_form() -> None:
    with pytest.raises(
        InputError,
        match=r"input 'x' expects shape \[1, 3\] \(or \[N, 3\] for a batch of N images\), but "
        r"an array of shape \[4, 2\] was given",
    ):
        _two_inputs().run(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(InputError, match=r"input 'x' expects shape \[1, 3\] .* shape \[3\]"):
        _two_inputs().run(np.zeros(3), np.zeros((1, 3)))
    with pytest.raises(InputError, match=r"input 'x' holds no images \(shape \[0, 3\]\)"):
        _two_inputs().run(np.zeros((0, 3)), np.zeros((0, 3)))


def test_dtypes_other_than_numbers_are_refused_and_integers_quantized_as_values() -> None:
    with pytest.raises(
        InputError,
        match=r"input 'x' expects real numbers \(a float or integer array\), but an "
        "array of dtype bool was given; convert it first",
    ):
        _two_inputs().run(np.zeros((2, 3), bool), np.zeros((2, 3)))
    pixels = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)  # no normalization: 255 saturates
    assert _two_inputs().run(pixels, pixels).raw_outputs[0].tolist() == [[0, 2, 4], [6, 8, 127]]


def test_an_out_of_range_integer_names_the_image_of_the_batch() -> None:
    values = np.zeros((3, 3), np.int64)
    values[2, 1] = 300
    with pytest.raises(InputError, match=r"values in \[0, 300\] \(image 2 of the batch of 3\)"):
        _two_inputs().run_raw(values, np.zeros((3, 3), np.int64))
