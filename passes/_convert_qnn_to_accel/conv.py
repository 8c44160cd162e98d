"""Lowering a conv2d/linear layer and the requantize after it to load/conv/store_acc tiles.

Per output tile (n channels x rows, in the plan's order) and per K-chunk of its input
channels: the weights when they differ from the ones held; for the first chunk the tile's
multipliers (when they change) and the biases broadcast into an output buffer (without a
nonzero bias the first chunk's conv overwrites it instead); the input block with its zero
padding when it differs from the one held (last, as the only load that may wait for the
previous layer); then a conv accumulating into the output buffer. Finally store_acc
requantizes the tile into DRAM with the fused activation's clamp. Buffers alternate between
two slots, so the next tile loads while this one computes and the previous one stores;
`schedule` turns the buffer and DRAM hazards into tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from dopant.backend.target import AccelConfig
from dopant.dialects.accel import LayerOp
from dopant.passes._convert_qnn_to_accel.schedule import Box, DoubleBuffer, Schedule
from dopant.passes.tiling import conv as tc
from dopant.passes.tiling.plan import ConvPlan, ConvShape
from dopant.support.errors import DopantError


@dataclass(frozen=True)
class ConvDram:
    """DRAM byte addresses of a conv layer's operands (bias -1 when there is none)."""

    x: int
    weight: int
    bias: int
    table: int  # m0[0..n) then shift[0..n), int32
    out: int


def layer_op(shape: ConvShape, config: AccelConfig) -> LayerOp:
    """The layer's untiled GEMM, at the widths its conv instructions fuse to (`tc.conv`)."""
    return LayerOp.make(
        shape.path,
        m=shape.oh * shape.ow,
        k=shape.cg * shape.kh * shape.kw,
        n=shape.og,
        groups=shape.groups,
        w_bits=tc.array_bits(shape.weight.bits, config.weight_bits),
        a_bits=tc.array_bits(shape.x.bits, config.act_bits),
    )


def lower_conv(
    schedule: Schedule,
    shape: ConvShape,
    plan: ConvPlan,
    config: AccelConfig,
    dram: ConvDram,
    clamp: tuple[int, int, int],
) -> None:
    """Emit the layer's instructions (all named by the layer's path) into `schedule`."""
    if shape.groups > 1 and plan.n % shape.og:
        raise DopantError(f'"{shape.path}": a tile of {plan.n} channels splits a group.')
    buffers = tc.ConvBuffers.of(shape, plan)
    buffers.check(config, f'"{shape.path}"')
    if schedule.flipped:
        buffers = buffers.flipped(config)
    inputs, weights = DoubleBuffer(buffers.inputs), DoubleBuffer(buffers.weights)
    outputs, params = DoubleBuffer(buffers.outputs), DoubleBuffer(buffers.params)
    x_dims, out_dims = (shape.c, shape.h, shape.w), (shape.n, shape.oh, shape.ow)
    path = shape.path
    for n0, ns, r0, rs in tc.output_tiles(shape, plan):
        out = outputs.next()
        par, load_params = params.take(n0)
        for index, (c0, cs) in enumerate(tc.chunks(shape, plan, n0, ns)):
            t = tc.ConvTile(n0, ns, r0, rs, c0, cs)
            # Weights and multipliers first: they do not wait for the previous layer.
            wgt, load = weights.take((n0, c0))
            if load:
                fields = tc.weight_load(shape, t, wgt.start, dram.weight)
                schedule.emit("load", path, fields, [], [wgt])
            if index == 0 and load_params:
                fields = tc.params_load(shape, t, par.start, dram.table)
                schedule.emit("load", path, fields, [], [par])
            if index == 0 and shape.has_bias:
                fields = tc.bias_load(shape, t, out.start, dram.bias)
                schedule.emit("load", path, fields, [], [out])
            inp, load = inputs.take((r0, c0) if shape.groups == 1 else (r0, n0))
            if load:
                fields = tc.input_load(shape, t, inp.start, dram.x)
                first, pad = tc.input_rows(shape, t)
                rows = min(shape.h - first, shape.in_rows(rs) - pad)
                read = Box(dram.x, x_dims, ((c0, c0 + cs), (first, first + rows), (0, shape.w)))
                schedule.emit("load", path, fields, [read], [inp])
            accumulate = index > 0 or shape.has_bias
            addresses = (inp.start, wgt.start, out.start)
            fields = tc.conv(shape, t, config, addresses, accumulate)
            schedule.emit("conv", path, fields, [inp, wgt], [out])
        t = tc.ConvTile(n0, ns, r0, rs, 0, 0)
        fields = tc.store_acc(shape, t, (out.start, par.start), dram.out, clamp)
        written = Box(dram.out, out_dims, ((n0, n0 + ns), (r0, r0 + rs), (0, shape.ow)))
        schedule.emit("store_acc", path, fields, [out, par], [written])
