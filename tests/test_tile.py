"""The tile pass on `.mlir` text: the plans it writes fit the machine (capacity arithmetic in
the comments), read back from text, follow the target, agree with the simulated cycles, and
layers that no tile fits fail naming their path."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from timed import timed

from dopant.backend.config_attr import module_target
from dopant.backend.emit import emit_binary
from dopant.backend.presets import preset
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.accel import InstructionOp
from dopant.dialects.qnn import Conv2DOp, LinearOp, QnnOp
from dopant.passes.tiling.conv import ConvBuffers
from dopant.passes.tiling.cost import Estimate, conv_estimate, vector_estimate
from dopant.passes.tiling.ops import vector_shapes
from dopant.passes.tiling.plan import ConvPlan, ConvShape, conv_plan, vector_plan
from dopant.passes.tiling.vector import VectorBuffers, fitted
from dopant.runtime.loader import load
from dopant.support.errors import PipelineError


def conv_net(
    c: int,
    hw: tuple[int, int],
    n: int,
    k: int = 3,
    pad: int = 1,
    groups: int = 1,
    path: str = "conv",
) -> str:
    """A quantized batch-1 network of one conv (weights all 1) with its requantize and relu."""
    h, w = hw
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    x, q = f"tensor<1x{c}x{h}x{w}xf32>", f"tensor<1x{c}x{h}x{w}xui8>"
    wt = f"tensor<{n}x{c // groups}x{k}x{k}xsi8>"
    acc, out, y = (f"tensor<1x{n}x{oh}x{ow}x{e}>" for e in ("si32", "ui8", "f32"))
    return f"""builtin.module {{
  func.func @forward(%x: {x}) -> {y} {{
    %q = qnn.quantize %x to <ui8, scale = [0.01], zp = [0]> at "input" : {x} -> {q}
    %w = qnn.constant dense<1> : {wt} params <si8, scale = [0.01], zp = [0]> at "{path}.weight"
    %a = qnn.conv2d %q, %w stride [1, 1] pad [{pad}, {pad}, {pad}, {pad}] dilation [1, 1] groups {groups} at "{path}" : ({q}, {wt}) -> {acc}
    %r = qnn.requantize %a from <si32, scale = [0.0001], zp = [0]> to <ui8, scale = [0.05], zp = [0]> rounding "gemmlowp" act <relu> at "{path}/requantize" : {acc} -> {out}
    %y = qnn.dequantize %r from <ui8, scale = [0.05], zp = [0]> at "output" : {out} -> {y}
    func.return %y : {y}
  }}
}}
"""


def tiled(text: str, options: str) -> str:
    module = parse_ir(text)
    run_pipeline(module, f"tile{{{options}}}")
    return ir_text(module)


def plan_of(text: str) -> dict[str, int | str]:
    (plan,) = re.findall(r"tile = \{([^}]*)\}", text)
    entries = (entry.split(" = ") for entry in plan.split(", "))
    return {k: v.strip('"') if v.startswith('"') else int(v.split(" : ")[0]) for k, v in entries}


def test_a_conv_plan_fits_small8_with_double_buffering() -> None:
    text = tiled(conv_net(16, (32, 32), 32), 'target="small8"')
    assert plan_of(text) == {"n": 16, "rows": 3, "c": 16, "order": "nrc", "cycles": 75248}
    # The estimate is compute-bound: the compute engine's cycles plus the first tile's loads
    # and the last store. The first tile's three loads (weights, multipliers, inputs) now
    # overlap their latency, 4 in flight on small8: L + their transfers, 2 x L = 200 cycles
    # less than one at a time (75448 then).
    # small8: 64 KiB scratchpad = 65536 bytes, 16 KiB accumulator = 4096 int32 words.
    # Scratchpad: 2 inputs of 16 channels x (3 - 1 + 3 = 5 rows) x (32 + 2 = 34 columns) = 2 x 2720
    # plus 2 weight tiles of 16 x 16 x 3 x 3 = 2 x 2304: 10048 <= 65536.
    # Accumulator: 2 outputs of 16 x 3 x 32 = 2 x 1536 words plus 2 x 2 x 16 words of
    # multipliers: 3136 <= 4096; a fourth row would need 2 x 2048 + 64 = 4160 > 4096.
    module = parse_ir(text)
    conv = next(op for op in module.walk() if isinstance(op, Conv2DOp))
    buffers = ConvBuffers.of(ConvShape.of(conv), conv_plan(conv))
    assert (buffers.sp_bytes, buffers.acc_words) == (2 * 2720 + 2 * 2304, 2 * 1536 + 2 * 32)


def test_the_plan_and_the_target_read_back_from_text() -> None:
    text = tiled(conv_net(16, (32, 32), 32), 'target="edge16" dataflow="os"')
    module = parse_ir(text)
    assert ir_text(module) == text
    assert module_target(module) == preset("edge16").with_changes(dataflow="os")


def test_the_cost_model_estimates_the_simulated_cycles() -> None:
    module = parse_ir(conv_net(32, (28, 28), 64))
    run_pipeline(module, 'tile{target="edge16"},convert-qnn-to-accel')
    stats = load(emit_binary(module)).run(np.zeros((1, 32, 28, 28), np.float32)).stats
    estimate = plan_of(tiled(conv_net(32, (28, 28), 64), 'target="edge16"'))["cycles"]
    assert abs(stats.total_cycles - estimate) <= 0.1 * stats.total_cycles


LOAD = dict(d=1, h=1, w=64, sw=1, bits=8)  # 64 B: 8 channel cycles, 100 + 8 = 108 on small8
# M = 8, K = 1, N = 1: one fold, 8 (preload) + max(8, 8) + 14 = 30 cycles (weight stationary).
CONV = dict(c_in=1, ih=1, iw=8, n=1, groups=1, kh=1, kw=1, stride_h=1, stride_w=1, dil_h=1)
CONV |= dict(dil_w=1, oh=1, ow=8, w_bits=8, a_bits=8)


def test_small_tiles_are_paced_by_their_double_buffer() -> None:
    # Ten tiles, each a load into one of two input buffers and a conv reading it.
    est = Estimate(preset("small8"))
    est.add("load", LOAD, 10, ("inputs",))
    est.add("conv", CONV, 10, ("inputs",))
    # Engines: the loads share max(8, 108 / 4) = 27 each, 270; the convs 300; the channel 80.
    # But a tile holds its buffer 108 + 30 = 138 cycles, two at a time: 10 * 138 / 2 = 690.
    assert (est.busy, est.channel, est.cycles) == ({"load": 270, "compute": 300}, 80, 690)
    # The timing model agrees to the last conv: load i + 2 waits for conv i, so each pair of
    # tiles takes 108 + 30 = 138: conv 8 ends at 5 * 138 = 690, conv 9 at 720.
    lines = ["load d=1 h=1 w=64 sw=1 bits=8 signal=0b1"] * 2
    conv = " ".join(f"{k}={v}" for k, v in CONV.items())
    for i in range(10):
        lines.append(f"conv wait=0b1 {conv}" + (" signal=0b10" if i < 8 else ""))
        if i < 8:
            lines.append("load wait=0b10 d=1 h=1 w=64 sw=1 bits=8 signal=0b1")
    assert timed("\n".join(lines), preset("small8")).total_cycles == 720


def test_a_depthwise_conv_cut_per_channel_is_paced_by_its_multipliers() -> None:
    text = conv_net(32, (4, 4), 32, groups=32)
    op = next(op for op in parse_ir(text).walk() if isinstance(op, Conv2DOp))
    est = conv_estimate(ConvShape.of(op), ConvPlan(1, 4, 1, "nrc", 0), preset("large32"))
    # large32: L = 120, 32 B a cycle, 32 x 32, 32 lanes, 16 DMAs in flight. Per channel: 9 B of
    # weights and 2 multiplier words, each 120 + 1 = 121; 6 x 6 input bytes, 120 + 2 = 122; the
    # conv (M = 16, K = 9, N = 1) 32 + max(16, 32) + 62 = 126; store_acc of 16, 121.
    # The engines: 32 convs, 4032 cycles, after the first loads (120 + 1 + 1 + 2 = 124) and
    # before the last store (121): 4277. But each tile's multipliers wait for the store_acc
    # two tiles back to free their slot, and its input queues behind them (issued 1 cycle
    # later, done 1 + 122 = 123 after the slot frees), then the conv and the store_acc:
    # 123 + 126 + 121 = 370 per tile, two slots: 32 * 370 / 2 = 5920.
    assert est.busy["compute"] == 4032 and (est.first, est.last) == (124, 121)
    assert est.holds["params"] == 32 * 370 and est.cycles == 5920


def test_a_grouped_conv_whose_group_does_not_fit_fails_naming_its_path() -> None:
    # A group cannot be split into K-chunks: two input tiles of its 1200 channels x 3 rows x
    # 10 columns and two weight tiles of 1 x 1200 x 3 x 3 are 72000 + 21600 = 93600 bytes,
    # over small8's 65536-byte scratchpad.
    text = conv_net(2400, (8, 8), 2, groups=2, path="features.7")
    with pytest.raises(
        PipelineError, match=r'no tiling of "features.7" .* 93600 of 65536 scratchpad bytes'
    ):
        tiled(text, 'target="small8"')


def test_an_output_row_too_wide_for_the_accumulator_fails() -> None:
    # One output channel of one 3000-wide row is 3000 int32 words; doubled that is 6000 plus
    # 4 multiplier words, over small8's 4096.
    with pytest.raises(PipelineError, match=r'"wide" .* 6004 of 4096 accumulator words'):
        tiled(conv_net(1, (3, 3000), 1, path="wide"), 'target="small8"')


def test_tile_refuses_float_ir_and_unknown_targets() -> None:
    float_net = """func.func @forward(%x: tensor<1x2xf32>) -> tensor<1x2xf32> {
  %r = qnn.relu %x at "act" : tensor<1x2xf32>
  func.return %r : tensor<1x2xf32>
}"""
    with pytest.raises(PipelineError, match=r'qnn.relu at "act" computes in f32.*run quantize'):
        tiled(float_net, "")
    with pytest.raises(PipelineError, match="unknown accelerator preset 'tiny'"):
        tiled(conv_net(4, (8, 8), 4), 'target="tiny"')


@pytest.mark.parametrize("target", ["small8", "large32"])
def test_every_plan_of_a_network_fits(target: str, quantized_resnet8: str) -> None:
    module = parse_ir(tiled(quantized_resnet8, f'target="{target}"'))
    config = preset(target)
    for op in module.walk():
        if isinstance(op, Conv2DOp | LinearOp):
            assert ConvBuffers.of(ConvShape.of(op), conv_plan(op)).fits(config), op.where
        elif isinstance(op, QnnOp) and "tile" in op.attributes:
            for shape in vector_shapes(op):
                plan = fitted(vector_plan(op), shape)
                assert VectorBuffers.of(shape, plan).sp_bytes <= config.scratchpad_bytes


@pytest.mark.parametrize("options", ['target="small8"', 'target="edge16" dataflow="os"'])
def test_the_cost_model_counts_the_instructions_the_lowering_emits(
    options: str, quantized_resnet8: str
) -> None:
    module = parse_ir(tiled(quantized_resnet8, options))
    config = module_target(module)
    estimated = {}
    for op in module.walk():
        if isinstance(op, Conv2DOp | LinearOp):
            estimate = conv_estimate(ConvShape.of(op), conv_plan(op), config)
            estimated[op.path.data] = estimate.instructions
        elif isinstance(op, QnnOp) and "tile" in op.attributes:
            estimate = vector_estimate(vector_shapes(op), vector_plan(op), config)
            estimated[op.path.data] = estimate.instructions
    run_pipeline(module, "convert-qnn-to-accel")
    code = [op.path.data for op in module.body.block.ops if isinstance(op, InstructionOp)]
    assert estimated == dict(Counter(code))


@pytest.fixture(scope="module")
def quantized_resnet8() -> str:
    import torch

    from dopant.compiler.driver import quantize_network
    from dopant.compiler.frontend import import_model
    from dopant.compiler.models import zoo

    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    module = import_model(zoo.get("resnet8").build(), torch.from_numpy(x[:1]))
    return ir_text(quantize_network(module, x))
