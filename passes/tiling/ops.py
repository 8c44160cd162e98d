"""Which integer `qnn` ops become instructions, and the shapes `tile` plans them by.

conv2d / linear (with the requantize after them)  -> the array       (ConvShape)
add, requantize, relu                              -> the vector unit (VectorShape "add"/"requant")
max / avg / global average pool                    -> the vector unit (VectorShape "pool")
concat                                             -> copies          (VectorShape "copy" each)
quantize, dequantize, reshape, constants           -> no instructions (DRAM I/O and aliases)
"""

from __future__ import annotations

from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from dopant.dialects.qnn import (
    AddOp,
    AvgPool2DOp,
    ConcatOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    GlobalAvgPoolOp,
    LinearOp,
    MaxPool2DOp,
    QnnOp,
    QuantizeOp,
    ReluOp,
    RequantizeOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import ints, is_float, shape
from dopant.passes.tiling.plan import Elem, fused_requantize
from dopant.passes.tiling.vector import VectorShape, Window
from dopant.support.errors import DopantError

VECTOR_OPS = (AddOp, RequantizeOp, ReluOp, MaxPool2DOp, AvgPool2DOp, GlobalAvgPoolOp, ConcatOp)
PASSIVE_OPS = (ConstantOp, QuantizeOp, DequantizeOp, ReshapeOp, RequantizeOp, ReturnOp)


def planned_ops(fn: FuncOp) -> list[QnnOp]:
    """The ops of `fn` that need a tile plan, in order; DopantError naming the first op that
    cannot run on the accelerator (float ops, unknown ops)."""
    fused: set[RequantizeOp] = set()
    planned: list[QnnOp] = []
    for op in fn.body.block.ops:
        io = isinstance(op, QuantizeOp | DequantizeOp)
        if isinstance(op, QnnOp) and not io and op.results and is_float(op.results[0]):
            raise DopantError(
                f"{op.where} computes in f32; the accelerator runs integer IR only, so run "
                "quantize before tile."
            )
        if isinstance(op, Conv2DOp | LinearOp):
            fused.add(fused_requantize(op))
            planned.append(op)
        elif isinstance(op, VECTOR_OPS) and op not in fused:
            planned.append(op)
        elif not isinstance(op, PASSIVE_OPS):  # a requantize here follows a conv/linear
            where = op.where if isinstance(op, QnnOp) else op.name
            raise DopantError(f"{where} has no lowering to the accelerator.")
    return planned


def plane(value: SSAValue, where: str) -> tuple[int, int, int]:
    """A batch-1 tensor as [c, h, w]: NCHW, or [1, K] as [K, 1, 1]."""
    dims = shape(value)
    if len(dims) not in (2, 4) or dims[0] != 1:
        raise DopantError(
            f"{where}: the accelerator takes batch-1 NCHW or [1, K] tensors, got {list(dims)}; "
            "run set-batch{size=1} first."
        )
    return (dims[1], dims[2], dims[3]) if len(dims) == 4 else (dims[1], 1, 1)


def vector_shapes(op: Operation) -> list[VectorShape]:
    """The vector-unit layers of `op` (one per concat input)."""
    assert isinstance(op, QnnOp)
    where, path = op.where, op.path.data
    if isinstance(op, ConcatOp):
        return [_elementwise("copy", path, value, value, where) for value in op.inputs]
    result = op.results[0]
    if isinstance(op, AddOp):
        return [_elementwise("add", path, op.lhs, result, where)]
    if isinstance(op, RequantizeOp):
        per_channel = op.in_params.is_per_channel or op.out_params.is_per_channel
        if per_channel or Elem.of(op.input).bits > 8:
            raise DopantError(
                f"{where}: a standalone requantize runs on the vector unit, which rescales "
                "8-bit values by one multiplier; this one is per channel or reads si32."
            )
        return [_elementwise("requant", path, op.input, result, where)]
    if isinstance(op, ReluOp):
        return [_elementwise("requant", path, op.input, result, where)]
    return [_pool(op, where)]


def _elementwise(
    kind: str, path: str, value: SSAValue, result: SSAValue, where: str
) -> VectorShape:
    c, h, w = plane(value, where)
    return VectorShape(kind, path, c, h, w, h, w, Elem.of(value), Elem.of(result))


def _pool(op: QnnOp, where: str) -> VectorShape:
    assert isinstance(op, MaxPool2DOp | AvgPool2DOp | GlobalAvgPoolOp)
    c, h, w = plane(op.input, where)
    _, oh, ow = plane(op.output, where)
    if isinstance(op, GlobalAvgPoolOp):
        window = Window((h, w), (1, 1), (0, 0, 0, 0), ceil_mode=False, avg=True)
    else:
        if isinstance(op, MaxPool2DOp) and ints(op.dilation) != (1, 1):
            raise DopantError(f"{where}: the vector unit pools without dilation.")
        kernel, strides, padding = op.pool_props()
        window = Window(
            (kernel[0], kernel[1]),
            (strides[0], strides[1]),
            (padding[0], padding[1], padding[2], padding[3]),
            ceil_mode=op.ceil_mode is not None,
            avg=isinstance(op, AvgPool2DOp),
            zero_pad=isinstance(op, MaxPool2DOp) and op.zero_pad is not None,
            count_include_pad=isinstance(op, AvgPool2DOp) and op.count_include_pad is not None,
        )
    x = Elem.of(op.input)
    return VectorShape("pool", op.path.data, c, h, w, oh, ow, x, x, window=window)
