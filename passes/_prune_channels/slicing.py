"""Physical removal of channels: slice every constant, parameter and type a plan touches.

Given the channels each activation keeps, each op is rewritten where it is: a conv's or linear
layer's weight rows (output channels) and columns (input channels or features), its bias, a
batch norm's four vectors, per-channel quantization parameters of constants and of
requantize and (de)quantize ops, the `groups` of a depthwise conv, and every result type.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, IntegerAttr, TensorType, i64
from xdsl.ir import Operation, SSAValue
from xdsl.rewriter import InsertPoint, Rewriter

from dopant.dialects.qnn import BatchNormOp, ConstantOp, Conv2DOp, LinearOp, QuantParamsAttr
from dopant.dialects.qnn.base import shape
from dopant.support.errors import DopantError

Kept = dict[SSAValue, np.ndarray]


def slice_params(params: QuantParamsAttr, keep: np.ndarray) -> QuantParamsAttr:
    """Per-channel parameters cut down to the kept channels (per-tensor ones unchanged)."""
    if not params.is_per_channel:
        return params
    scales, zero_points = np.asarray(params.scales), np.asarray(params.zero_points)
    return QuantParamsAttr.get(
        scales[keep].tolist(),
        zero_points[keep].tolist(),
        params.bits.data,
        params.is_signed,
        params.axis.data,
    )


def apply_kept(fn: func.FuncOp, kept: Kept) -> None:
    """Rewrite `fn` so each activation in `kept` has only those channels (axis 1).

    `kept` is updated as results are retyped (a new type makes a new SSA value)."""
    for op in list(fn.body.block.ops):
        if isinstance(op, Conv2DOp):
            _slice_conv(op, kept)
        elif isinstance(op, LinearOp):
            _slice_layer_constants(op, op.weight, op.bias, kept[op.output], kept[op.input])
        elif isinstance(op, BatchNormOp):
            for value in (op.scale, op.shift, op.mean, op.var):
                _replace_constant(op, value, kept[op.output], None)
        _slice_properties(op, kept)
        for result in op.results:
            if result in kept and len(kept[result]) != shape(result)[1]:
                new = Rewriter.replace_value_with_new_type(result, _narrowed(result, kept[result]))
                kept[new] = kept.pop(result)
    _erase_dead_constants(fn)
    outputs = [v.type for v in fn.get_return_op().operands]  # type: ignore[union-attr]
    fn.function_type = FunctionType.from_lists([a.type for a in fn.body.block.args], outputs)


def _narrowed(value: SSAValue, keep: np.ndarray) -> TensorType:
    ty = value.type
    assert isinstance(ty, TensorType)
    dims = list(ty.get_shape())
    dims[1] = len(keep)
    return TensorType(ty.element_type, dims)


def conv_columns(groups: int, per_in: int, keep_in: np.ndarray) -> tuple[np.ndarray, int]:
    """The weight columns (axis 1) a conv of `groups` groups, `per_in` input channels each,
    keeps when it keeps the input channels `keep_in`, and its new number of groups.

    A depthwise conv (one input channel per group) keeps its one column and a group per kept
    input; a grouped conv drops channel j of every group together (graph.py), so group 0 shows
    which columns stay and the groups stay. The torch mirror slices by the same rule.
    """
    if groups == 1:
        return keep_in, 1
    if per_in == 1:
        return np.zeros(1, dtype=np.int64), len(keep_in)
    return keep_in[keep_in < per_in], groups


def _slice_conv(op: Conv2DOp, kept: Kept) -> None:
    groups = op.groups.value.data
    keep_in, keep_out = kept[op.input], kept[op.output]
    columns, new_groups = conv_columns(groups, shape(op.weight)[1], keep_in)
    if new_groups != groups:
        op.properties["groups"] = IntegerAttr(new_groups, i64)
    _slice_layer_constants(op, op.weight, op.bias, keep_out, columns)


def _slice_layer_constants(
    op: Operation,
    weight: SSAValue,
    bias: SSAValue | None,
    rows: np.ndarray,
    columns: np.ndarray,
) -> None:
    _replace_constant(op, weight, rows, columns)
    if bias is not None:
        _replace_constant(op, bias, rows, None)


def _replace_constant(
    op: Operation, value: SSAValue, rows: np.ndarray, columns: np.ndarray | None
) -> None:
    """Give `op` a sliced copy of the constant `value` (rows = axis 0, columns = axis 1)."""
    const = value.owner
    if not isinstance(const, ConstantOp):
        raise DopantError(
            f"prune-channels needs constant weights, but an operand of {op.name} at "
            f'"{op.properties["path"]}" is computed; fold it to a constant first.'
        )
    array = const.numpy()
    if len(rows) == array.shape[0] and (columns is None or len(columns) == array.shape[1]):
        return
    sliced = array[rows] if columns is None else array[rows][:, columns]
    params = const.params
    if params is not None and params.is_per_channel and params.axis.data == 0:
        params = slice_params(params, rows)
    path = const.path.data if const.path else None
    new = ConstantOp.of(sliced, path, const.value.get_element_type(), params)
    Rewriter.insert_op(new, InsertPoint.before(op))
    index = list(op.operands).index(value)
    op.operands = [*op.operands[:index], new.result, *op.operands[index + 1 :]]


def _slice_properties(op: Operation, kept: Kept) -> None:
    """Per-channel (axis 1) parameters of the activations an op reads and writes."""
    if not op.results or op.results[0] not in kept:
        return
    keep = kept[op.results[0]]
    for name, attr in list(op.properties.items()):
        if (
            isinstance(attr, QuantParamsAttr)
            and attr.axis.data == 1
            and len(attr.scales) != len(keep)
        ):
            op.properties[name] = slice_params(attr, keep)


def _erase_dead_constants(fn: func.FuncOp) -> None:
    for op in list(fn.body.block.ops):
        if isinstance(op, ConstantOp) and not op.result.uses:
            Rewriter.erase_op(op)
