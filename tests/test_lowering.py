"""tile + convert-qnn-to-accel end to end: the binary computes on the simulator exactly what the
integer reference computes from the IR before tiling (dequantized and raw integers), for the
zoo models on every preset, dataflow and bit-width setting and for random small CNNs; the
accel module it writes (I/O, segments, tokens, layer names), determinism, and its errors."""

from __future__ import annotations

import functools
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.config_attr import set_module_target
from dopant.backend.emit import emit_binary
from dopant.backend.presets import load_target, preset
from dopant.compiler.driver import quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.accel import InstructionOp, SegmentOp, TensorOp
from dopant.dialects.isa import TOKENS
from dopant.dialects.qnn import DequantizeOp, QnnOp
from dopant.dialects.qnn.values import value_names
from dopant.runtime import reference
from dopant.runtime.loader import load
from dopant.runtime.queues import engine_queues, token_list
from dopant.runtime.semantics import OPS
from dopant.runtime.simulator import initial_memories, quantize_inputs, read_tensors
from dopant.support.errors import PipelineError

SETTINGS = {
    "w8a8": {"weight_bits": 8, "act_bits": 8},
    "w4a8": {"weight_bits": 4, "act_bits": 8},
    "mixed": {"weight_bits": 4, "act_bits": 4, "first_last_bits": 8},
}


@functools.cache
def zoo_network(name: str, setting: str) -> tuple[str, np.ndarray]:
    """A zoo model quantized with `setting` (as text, so each test parses a fresh copy) and an
    input it was calibrated on."""
    shape = zoo.get(name).input_shape
    x = np.random.default_rng(0).uniform(0, 1, (4, *shape[1:])).astype(np.float32)
    module = import_model(zoo.get(name).build(), torch.from_numpy(x[:1]))
    return ir_text(quantize_network(module, x, **SETTINGS[setting])), x[:1]


def compile_ir(module: ModuleOp, target: str, dataflow: str = "") -> bytes:
    run_pipeline(module, f'tile{{target="{target}" dataflow="{dataflow}"}},convert-qnn-to-accel')
    return emit_binary(module)


def raw_reference(module: ModuleOp, x: np.ndarray) -> list[np.ndarray]:
    """The integers the reference computes for each output, before dequantization."""
    values = reference.trace(module, x)
    keys = value_names(module.walk())
    outputs = [op for op in module.walk() if isinstance(op, DequantizeOp)]
    return [values[keys[op.input.owner]] for op in outputs]


def check_bit_exact(text: str, x: np.ndarray, target: str, dataflow: str = "") -> bytes:
    """Compile `text` and check the simulator against the reference on `x`; the binary."""
    module = parse_ir(text)
    expected, raw = reference.run(module, x), raw_reference(module, x)
    binary = compile_ir(module, target, dataflow)
    result = load(binary).run(x)
    for want, got in zip(expected, result.outputs, strict=True):
        assert np.array_equal(want, got)
    for want, got in zip(raw, result.raw_outputs, strict=True):
        assert np.array_equal(want.astype(np.int64), got)
    return binary


# Each model meets every preset, both dataflows and every bit-width setting at least once.
CASES = [
    ("mlp", "small8", "ws", "w8a8"),
    ("mlp", "edge16", "os", "w4a8"),
    ("mlp", "large32", "ws", "mixed"),
    ("lenet5", "small8", "os", "mixed"),
    ("lenet5", "edge16", "ws", "w8a8"),
    ("lenet5", "large32", "os", "w4a8"),
    ("resnet8", "small8", "ws", "w4a8"),
    ("resnet8", "edge16", "os", "mixed"),
    ("resnet8", "large32", "ws", "w8a8"),
    ("resnet20", "edge16", "ws", "w8a8"),
    ("mobilenetv2", "small8", "os", "w8a8"),
    ("mobilenetv2", "edge16", "ws", "w4a8"),
    ("mobilenetv2", "large32", "os", "mixed"),
    ("vgg_small", "small8", "ws", "mixed"),
    ("vgg_small", "edge16", "os", "w8a8"),
    ("vgg_small", "large32", "ws", "w4a8"),
    # ResNet-18 at 224x224 (1.8 GMAC): about 6 s each.
    ("resnet18", "edge16", "ws", "w8a8"),
    ("resnet18", "large32", "os", "mixed"),
]


@pytest.mark.parametrize(("name", "target", "dataflow", "setting"), CASES)
def test_zoo_models_run_bit_exact(name: str, target: str, dataflow: str, setting: str) -> None:
    text, x = zoo_network(name, setting)
    check_bit_exact(text, x, target, dataflow)


def test_the_same_network_compiles_to_the_same_bytes_also_through_text() -> None:
    text, _ = zoo_network("resnet8", "w8a8")
    first, second = compile_ir(parse_ir(text), "edge16"), compile_ir(parse_ir(text), "edge16")
    assert first == second
    module = parse_ir(text)
    run_pipeline(module, 'tile{target="edge16"}')
    tiled = parse_ir(ir_text(module))  # convert-qnn-to-accel runs from text
    run_pipeline(tiled, "convert-qnn-to-accel")
    assert emit_binary(tiled) == first
    accel_text = ir_text(tiled)  # the accel IR round-trips: instructions, tensors, segments
    assert ir_text(parse_ir(accel_text)) == accel_text
    assert emit_binary(parse_ir(accel_text)) == first


def test_the_accel_module_holds_io_segments_and_balanced_tokens() -> None:
    text, _ = zoo_network("lenet5", "w4a8")
    module = parse_ir(text)
    layers = {op.path.data for op in module.walk() if isinstance(op, QnnOp)}
    run_pipeline(module, 'tile{target="small8"},convert-qnn-to-accel')
    ops = list(module.body.block.ops)
    assert not [op for op in ops if op.name.startswith("qnn.")]
    tensors = [op for op in ops if isinstance(op, TensorOp)]
    assert [(t.role.data, t.tensor_name.data) for t in tensors] == [
        ("input", "input"),
        ("output", "output"),
        # Every computed value, named as reference.trace names it (relus are fused into the
        # convs, the flatten aliases its input), for `dopant compare`.
        ("value", "features.0/requantize"),
        ("value", "features.2"),
        ("value", "features.3/requantize"),
        ("value", "features.5"),
        ("value", "classifier.1/requantize"),
        ("value", "classifier.3/requantize"),
        ("value", "classifier.5/requantize"),
    ]
    assert tensors[1].dram.value.data == tensors[-1].dram.value.data  # the output is a value
    segments = {op.path.data: str(op.element()) for op in ops if isinstance(op, SegmentOp)}
    assert segments["features.0.weight"] == "si4" and segments["features.0.bias"] == "si32"
    assert segments["features.0/multipliers"] == "si32"
    code = [op for op in ops if isinstance(op, InstructionOp)]
    assert {op.path.data for op in code} <= layers  # each instruction names its layer
    waits, signals = Counter[int](), Counter[int]()
    for op in code:
        for token in range(TOKENS):
            waits[token] += op.fields()["wait"] >> token & 1
            signals[token] += op.fields()["signal"] >> token & 1
    assert waits == signals  # every token ends where it started, at 0


LATEST = "latest"  # run_out_of_order's adversary: always the ready head latest in the program


def run_out_of_order(binary: bytes, x: np.ndarray, order: int | str) -> list[np.ndarray]:
    """Run a binary like the functional simulator, but start, among the queue heads whose tokens
    allow it, a random one (`order` is the seed) or always the one latest in program order
    (LATEST: every instruction runs as early as its tokens let it, ahead of the producers it
    does not wait for). Instructions the tokens leave unordered run either way round, so a
    missing dependency (a load overwriting a buffer still read, a read before its write)
    shows as a different result."""
    program = load(binary)
    mem = initial_memories(program, quantize_inputs(program, [x]))
    code = program.instructions
    queues = engine_queues(code)
    heads, counts, rng = dict.fromkeys(queues, 0), [0] * TOKENS, random.Random(order)
    while any(heads[e] < len(q) for e, q in queues.items()):
        ready = [
            e
            for e, q in queues.items()
            if heads[e] < len(q) and all(counts[t] for t in token_list(code[q[heads[e]]]["wait"]))
        ]
        if order == LATEST:
            engine = max(ready, key=lambda e: queues[e][heads[e]])
        else:
            engine = rng.choice(ready)
        instruction = code[queues[engine][heads[engine]]]
        for token in token_list(instruction["wait"]):
            counts[token] -= 1
        OPS[instruction.op](instruction.fields(), mem)
        for token in token_list(instruction["signal"]):
            counts[token] += 1
        heads[engine] += 1
    return [row[0] for row in read_tensors(mem, program.outputs, "outputs")]


class ReadLate(nn.Module):
    """Two branches from the input: `s` is first read three layers after it is written (by the
    residual add), so only the tokens between layers order that read; then a concat of an
    older value and the newest one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, t = torch.relu(self.a(x)), torch.relu(self.b(x))
        u = self.c(t)
        return torch.cat([u, torch.relu(self.d(s + u))], dim=1)


class NewestSecond(nn.Module):
    """A residual add whose second operand is the previous layer's output (its first is three
    layers old), then a concat whose first input is the newest, read by a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.left = nn.Conv2d(4, 3, 1)
        self.right = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        r = s + self.b(torch.relu(self.a(s)))
        left, right = self.left(r), torch.relu(self.right(r))
        return self.head(torch.cat([right, left], dim=1))


@functools.cache
def race_case(name: str, tiny: str) -> tuple[bytes, np.ndarray, list[np.ndarray]]:
    """`name` compiled for the tiny machine (many tiles, so many buffer reuses), an input, and
    the functional simulator's raw outputs on it. The branching networks take 4 x 4 maps: each
    layer is one or two tiles, so a layer may run ahead of the one it reads from."""
    if name == "resnet8":
        text, x = zoo_network("resnet8", "w4a8")
    else:
        torch.manual_seed(0)
        model = {"read-late": ReadLate, "newest-second": NewestSecond}[name]().eval()
        data = np.random.default_rng(0).normal(0, 1, (4, 2, 4, 4)).astype(np.float32)
        module = import_model(model, torch.from_numpy(data[:1]))
        text, x = ir_text(quantize_network(module, data, **SETTINGS["w4a8"])), data[:1]
    binary = compile_ir(parse_ir(text), tiny)
    return binary, x, load(binary).run(x).raw_outputs


@pytest.mark.parametrize("order", [0, 1, LATEST])
@pytest.mark.parametrize("name", ["resnet8", "read-late", "newest-second"])
def test_tokens_order_every_conflicting_pair_of_instructions(
    name: str, order: int | str, tiny: str
) -> None:
    binary, x, expected = race_case(name, tiny)
    for want, got in zip(expected, run_out_of_order(binary, x, order), strict=True):
        assert np.array_equal(want.reshape(-1), got)


class Residual(nn.Module):
    """x + conv(x) then relu: a residual add with a fused activation."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv(x))


class Branches(nn.Module):
    """Two convs concatenated along channels, then a zero-padded max pool and a ReLU6."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.left = nn.Conv2d(channels, 3, 1)
        self.right = nn.Conv2d(channels, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.left(x), torch.relu(self.right(x))], dim=1)
        return F.relu6(F.max_pool2d(F.pad(y, (1, 0, 1, 0)), 2))


def check_network(model: nn.Module, x: np.ndarray, target: str, dataflow: str, bits: str) -> bytes:
    """Quantize `model` (calibrated on `x`), compile it and check it on x[:1]; the binary."""
    module = import_model(model.eval(), torch.from_numpy(x[:1]))
    text = ir_text(quantize_network(module, x, **SETTINGS[bits]))
    return check_bit_exact(text, x[:1], target, dataflow)


def test_concat_zero_padded_pooling_and_standalone_activations_run_bit_exact() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        Branches(3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)
    )
    x = np.random.default_rng(1).normal(0, 1, (4, 3, 16, 16)).astype(np.float32)
    check_network(model, x, "small8", "os", "w8a8")


def _shape(layers: list[nn.Module], input_shape: tuple[int, int, int]) -> tuple[int, ...] | None:
    """[c, h, w] after `layers`, or None if torch refuses them (a window larger than the map)."""
    try:
        return tuple(nn.Sequential(*layers)(torch.zeros(1, *input_shape)).shape[1:])
    except RuntimeError:
        return None


def _layer(draw: st.DrawFn, shape: tuple[int, ...]) -> list[nn.Module]:
    channels = shape[0]
    kind = draw(st.sampled_from(["conv", "depthwise", "grouped", "residual", "pool"]))
    if kind == "residual":
        return [Residual(channels, draw(st.sampled_from([1, 3])))]
    if kind == "pool":
        kernel, stride = draw(st.sampled_from([2, 3])), draw(st.sampled_from([1, 2]))
        pad, ceil = draw(st.integers(0, kernel // 2)), draw(st.booleans())
        if min(shape[1:]) + 2 * pad < kernel:
            return []  # torch's ceil mode then differs from the output-size rule of qnn
        pool: nn.Module = (
            nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil)
            if draw(st.booleans())
            else nn.AvgPool2d(kernel, stride, pad, ceil, count_include_pad=draw(st.booleans()))
        )
        return [pool, draw(st.sampled_from([nn.ReLU(), nn.ReLU6(), nn.Identity()]))]
    kernel, stride = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, kernel // 2))
    groups = {"conv": 1, "depthwise": channels, "grouped": 2 if channels % 2 == 0 else 1}[kind]
    out = groups * draw(st.integers(1, 2 if kind == "depthwise" else 8))
    act = draw(st.sampled_from([nn.ReLU(), nn.ReLU6(), nn.Identity()]))
    # Only a conv without activation may lack a bias: fuse-activation cannot yet rebuild a
    # bias-free conv (zero biases, as folded batch norms give, exercise that path instead).
    bias = not isinstance(act, nn.Identity) or draw(st.booleans())
    return [nn.Conv2d(channels, out, kernel, stride, pad, groups=groups, bias=bias), act]


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, int, int]]:
    """A small CNN: convs (kernels 1-5, strides, padding, groups, depthwise), residual blocks,
    max and average pools (padding, ceil mode) with standalone ReLUs, then a classifier."""
    torch.manual_seed(draw(st.integers(0, 1000)))
    input_shape = (draw(st.integers(1, 4)), draw(st.integers(6, 14)), draw(st.integers(6, 16)))
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 4))):
        shape = _shape(layers, input_shape)
        assert shape is not None
        candidate = _layer(draw, shape)
        if _shape(layers + candidate, input_shape) is not None:
            layers += candidate
    c, h, w = _shape(layers, input_shape) or input_shape
    classes = draw(st.integers(1, 12))
    if draw(st.booleans()):
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    else:
        layers += [nn.Flatten(), nn.Linear(c * h * w, classes)]
    return nn.Sequential(*layers), input_shape


@settings(max_examples=12)
@given(
    networks(),
    st.sampled_from(["small8", "edge16", "large32", "tiny"]),
    st.sampled_from(["ws", "os"]),
    st.sampled_from(list(SETTINGS)),
    st.booleans(),
)
def test_random_cnns_run_bit_exact(
    tiny: str,
    network: tuple[nn.Module, tuple[int, int, int]],
    target: str,
    dataflow: str,
    bits: str,
    signed_input: bool,
) -> None:
    model, input_shape = network
    x = np.random.default_rng(0).uniform(-signed_input, 1, (4, *input_shape)).astype(np.float32)
    try:
        binary = check_network(model, x, tiny if target == "tiny" else target, dataflow, bits)
    except PipelineError as error:
        # A group cannot be split into K-chunks: the tiny machine may hold none (a clear error).
        if target == "tiny" and "no tiling of" in str(error):
            reject()
        raise
    if target == "tiny":  # many tiles: check the tokens order them in any execution order
        expected = load(binary).run(x[:1]).raw_outputs
        for want, got in zip(expected, run_out_of_order(binary, x[:1], 0), strict=True):
            assert np.array_equal(want.reshape(-1), got)


def test_convert_needs_the_tile_pass_and_plans_that_fit() -> None:
    text, _ = zoo_network("resnet8", "w8a8")
    with pytest.raises(PipelineError, match=r"no accel\.config attribute; run the tile pass"):
        run_pipeline(parse_ir(text), "convert-qnn-to-accel")
    module = parse_ir(text)
    run_pipeline(module, 'tile{target="large32"}')
    set_module_target(module, preset("small8"))
    with pytest.raises(PipelineError, match=r'"conv1": the tile plan needs .* but \'small8\' has'):
        run_pipeline(module, "convert-qnn-to-accel")
    module = parse_ir(text)
    run_pipeline(module, 'tile{target="small8"}')
    fc = next(op for op in module.walk() if isinstance(op, QnnOp) and op.path.data == "fc")
    del fc.attributes["tile"]
    with pytest.raises(PipelineError, match=r'qnn\.linear at "fc" has no tile plan; run the tile'):
        run_pipeline(module, "convert-qnn-to-accel")


def test_convert_refuses_a_vector_plan_made_for_a_bigger_machine(tiny: str) -> None:
    module = parse_ir("""func.func @forward(%x: tensor<1x16x32x32xf32>) -> tensor<1x16x16x16xf32> {
  %q = qnn.quantize %x to <ui8, scale = [0.1], zp = [0]> at "input" : tensor<1x16x32x32xf32> -> tensor<1x16x32x32xui8>
  %p = qnn.max_pool2d %q kernel [2, 2] stride [2, 2] pad [0, 0, 0, 0] dilation [1, 1] at "pool" : tensor<1x16x32x32xui8> -> tensor<1x16x16x16xui8>
  %y = qnn.dequantize %p from <ui8, scale = [0.1], zp = [0]> at "output" : tensor<1x16x16x16xui8> -> tensor<1x16x16x16xf32>
  func.return %y : tensor<1x16x16x16xf32>
}""")  # fmt: skip
    run_pipeline(module, 'tile{target="large32"}')
    set_module_target(module, load_target(tiny))
    # The large32 plan's double buffers hold far more than the tiny machine's 1 KiB.
    with pytest.raises(
        PipelineError,
        match=r'"pool": the tile plan needs \d+ scratchpad bytes, but \'tiny\' has 1024; re-run tile\.',
    ):
        run_pipeline(module, "convert-qnn-to-accel")


def test_convert_names_an_op_it_cannot_lower() -> None:
    module = parse_ir("""func.func @forward(%x: tensor<1x2xf32>) -> tensor<1x2xf32> {
  %c = qnn.clamp %x min 0.0 max 1.0 at "clip" : tensor<1x2xf32>
  func.return %c : tensor<1x2xf32>
}""")
    set_module_target(module, preset("small8"))
    with pytest.raises(PipelineError, match=r'cannot lower qnn\.clamp at "clip"'):
        run_pipeline(module, "convert-qnn-to-accel")
