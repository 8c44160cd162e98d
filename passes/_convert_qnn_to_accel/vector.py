"""Lowering vector-unit layers (residual add, requantize, relu, pooling) and copies (concat).

Per tile (channels x rows): load the operand block(s) into an input buffer, run vadd /
vrequant / vpool into an output buffer, store it; a copy stores the loaded block to its place
in the concatenated tensor. The layer's multipliers (vadd: m0 of a, m0 of b, shift of a, shift
of b; vrequant: m0, shift) are loaded once into accumulator word 0. Buffers alternate between
two slots so loads, vector work and stores of neighbouring tiles overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

from dopant.backend.target import AccelConfig
from dopant.passes._convert_qnn_to_accel.schedule import Box, Chip, DoubleBuffer, Schedule
from dopant.passes.tiling import vector as tv
from dopant.passes.tiling.plan import VectorPlan


def lower_vector(
    schedule: Schedule,
    config: AccelConfig,
    shape: tv.VectorShape,
    plan: VectorPlan,
    sources: Sequence[tv.Plane],
    target: tv.Plane,
    params: tuple[int, tuple[int, int, int]] | None = None,
) -> None:
    """Emit one vector layer reading `sources` (one per operand) and writing `target`;
    `params` is (DRAM address of the parameter words, (lo, hi, rounding)) for vadd/vrequant."""
    plan = tv.fitted(plan, shape)
    buffers = tv.VectorBuffers.of(shape, plan)
    buffers.check(config, f'"{shape.path}"')
    words = tv.param_words(shape.kind)
    if schedule.flipped:
        buffers = buffers.flipped(config, words)
    inputs, outputs = DoubleBuffer(buffers.inputs), DoubleBuffer(buffers.outputs)
    multipliers = Chip("acc", buffers.params, buffers.params + words)
    path = shape.path
    if params is not None:
        fields = tv.params_load(shape.kind, params[0], buffers.params)
        schedule.emit("load", path, fields, [], [multipliers])
    for c0, cs, r0, rs in tv.tiles(shape, plan):
        rows = tv.row_span(shape, r0, rs)
        inp = inputs.next()
        for k, source in enumerate(sources):
            fields = tv.load(source, c0, cs, rows, inp.start + k * buffers.operand)
            read = source.spans((c0, cs), (rows.first, rows.count), shape.w)
            schedule.emit("load", path, fields, [Box(source.dram, source.dims, read)], [inp])
        block, origin = (cs, rs, shape.ow), (c0, r0)
        written = Box(target.dram, target.dims, target.spans((c0, cs), (r0, rs), shape.ow))
        if shape.kind == "copy":
            fields = tv.store(target, block, origin, inp.start)
            schedule.emit("store", path, fields, [inp], [written])
            continue
        out = outputs.next()
        if shape.kind == "pool":
            op, fields = "vpool", tv.vpool(shape, cs, rows, rs, (inp.start, out.start))
            schedule.emit(op, path, fields, [inp], [out])
        else:
            assert params is not None, "vadd and vrequant read multipliers"
            io = (inp.start, inp.start + buffers.operand, out.start)
            count = cs * rs * shape.ow
            op, fields = tv.elementwise(shape, count, io, buffers.params, params[1])
            schedule.emit(op, path, fields, [inp, multipliers], [out])
        schedule.emit("store", path, tv.store(target, block, origin, out.start), [out], [written])
