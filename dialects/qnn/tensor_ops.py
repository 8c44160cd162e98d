"""`qnn` ops without weights: activations, residual add, pooling, reshape and concatenation."""

from __future__ import annotations

import math
from typing import ClassVar

from xdsl.dialects.builtin import (
    DenseArrayBase,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    UnitAttr,
    i64,
)
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import (
    VarConstraint,
    base,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import Pure

from dopant.dialects.qnn.attrs import ActivationAttr, QuantParamsAttr, check_rounding
from dopant.dialects.qnn.base import (
    QnnOp,
    check_len,
    check_result_shape,
    check_same_element,
    element,
    i64_array,
    ints,
    is_float,
    shape,
    with_shape,
)
from dopant.dialects.shapes import window_out

AnyTensor = base(TensorType)


@irdl_op_definition
class ReluOp(QnnOp):
    """Rectified linear unit, max(x, 0), elementwise."""

    name = "qnn.relu"
    T: ClassVar = VarConstraint("T", AnyTensor)
    input = operand_def(T)
    output = result_def(T)
    traits = traits_def(Pure())
    assembly_format = "$input `at` $path attr-dict `:` type($input)"

    def __init__(self, input: SSAValue, *, path: str):
        super().__init__(
            operands=[input], result_types=[input.type], properties={"path": StringAttr(path)}
        )


@irdl_op_definition
class ClampOp(QnnOp):
    """Clamp to [min, max] elementwise; ReLU6 and hardtanh are clamps."""

    name = "qnn.clamp"
    T: ClassVar = VarConstraint("T", AnyTensor)
    input = operand_def(T)
    output = result_def(T)
    min = prop_def(FloatAttr[Float64Type])
    max = prop_def(FloatAttr[Float64Type])
    traits = traits_def(Pure())
    assembly_format = "$input `min` $min `max` $max `at` $path attr-dict `:` type($input)"

    def __init__(self, input: SSAValue, *, lo: float, hi: float, path: str):
        super().__init__(
            operands=[input],
            result_types=[input.type],
            properties={
                "min": FloatAttr(lo, 64),
                "max": FloatAttr(hi, 64),
                "path": StringAttr(path),
            },
        )

    @property
    def bounds(self) -> tuple[float, float]:
        return self.min.value.data, self.max.value.data

    def verify_(self) -> None:
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise self.fail(f"the bounds [{lo}, {hi}] must be finite with min below max.")
        if not is_float(self.input):
            raise self.fail(
                "clamping integers needs their scale; use a qnn.requantize with an "
                "activation instead."
            )


@irdl_op_definition
class AddOp(QnnOp):
    """Elementwise sum of two same-shape tensors (a residual add), with a fused activation.

    Float: lhs + rhs. Integer: both operands are rescaled to the result's scale and summed,
    q = clamp(zp_out + rq(lhs - zp_lhs, S_lhs / S_out) + rq(rhs - zp_rhs, S_rhs / S_out)), each
    rq an integer multiply-and-shift with `rounding` (HAWQ-V3's dyadic residual add); the
    parameters of both operands and of the result are then required.
    """

    name = "qnn.add"
    lhs = operand_def(AnyTensor)
    rhs = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    lhs_params = opt_prop_def(QuantParamsAttr)
    rhs_params = opt_prop_def(QuantParamsAttr)
    out_params = opt_prop_def(QuantParamsAttr)
    rounding = opt_prop_def(StringAttr)
    act = opt_prop_def(ActivationAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$lhs `,` $rhs (`from` $lhs_params^ `,` $rhs_params `to` $out_params `rounding` "
        "$rounding)? (`act` $act^)? `at` $path attr-dict `:` functional-type(operands, results)"
    )

    def __init__(
        self,
        lhs: SSAValue,
        rhs: SSAValue,
        *,
        path: str,
        act: ActivationAttr | None = None,
        params: tuple[QuantParamsAttr, QuantParamsAttr, QuantParamsAttr] | None = None,
        rounding: str = "gemmlowp",
    ):
        lhs_params, rhs_params, out_params = params or (None, None, None)
        result_type = (
            lhs.type if out_params is None else with_shape(lhs, shape(lhs), out_params.element_type)
        )
        super().__init__(
            operands=[lhs, rhs],
            result_types=[result_type],
            properties={
                "path": StringAttr(path),
                "act": act,
                "lhs_params": lhs_params,
                "rhs_params": rhs_params,
                "out_params": out_params,
                "rounding": StringAttr(rounding) if params else None,
            },
        )

    @property
    def params(self) -> tuple[QuantParamsAttr, QuantParamsAttr, QuantParamsAttr] | None:
        if self.lhs_params is None or self.rhs_params is None or self.out_params is None:
            return None
        return self.lhs_params, self.rhs_params, self.out_params

    def verify_(self) -> None:
        if shape(self.lhs) != shape(self.rhs):
            raise self.fail(
                f"both operands need the same shape, got {list(shape(self.lhs))} "
                f"and {list(shape(self.rhs))}."
            )
        check_result_shape(self, shape(self.lhs), self.output)
        kinds = {is_float(v) for v in (self.lhs, self.rhs, self.output)}
        if len(kinds) != 1:
            raise self.fail("operands and result must be all f32 or all integers.")
        if is_float(self.lhs):
            check_same_element(self, self.lhs, self.rhs, "the second operand")
            check_same_element(self, self.lhs, self.output, "the result")
            if self.params is not None:
                raise self.fail("a float add takes no quantization parameters.")
            return
        params = self.params
        if params is None:
            raise self.fail(
                "an integer add needs the parameters of both operands and the "
                "result (`from <lhs>, <rhs> to <out> rounding ...`)."
            )
        for p, value, what in zip(
            params, (self.lhs, self.rhs, self.output), ("lhs", "rhs", "result"), strict=True
        ):
            if p.is_per_channel:
                raise self.fail(f"the {what} parameters must be per tensor.")
            if element(value) != p.element_type:
                raise self.fail(
                    f"the {what} has element type {element(value)} but its "
                    f"parameters say {p.element_type}."
                )
        check_rounding(self, self.rounding)


class _Pool2DOp(QnnOp):
    """Fields shared by max and average pooling over NCHW input."""

    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    kernel = prop_def(DenseArrayBase.constr(i64))
    strides = prop_def(DenseArrayBase.constr(i64))
    padding = prop_def(DenseArrayBase.constr(i64))
    ceil_mode = opt_prop_def(UnitAttr)
    traits = traits_def(Pure())

    def pool_props(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return ints(self.kernel), ints(self.strides), ints(self.padding)

    def verify_pool(self, dilation: tuple[int, int] = (1, 1), implicit_pad: bool = True) -> None:
        x = shape(self.input)
        if len(x) != 4:
            raise self.fail(f"expects a rank-4 NCHW input, got {list(x)}.")
        kernel, strides, padding = self.pool_props()
        check_len(self, "kernel", kernel, 2, 1)
        check_len(self, "strides", strides, 2, 1)
        check_len(self, "padding", padding, 4, 0)
        top, bottom, left, right = padding
        if implicit_pad:
            # torch's rule: no window may lie wholly in implicit padding. Zeros folded from an
            # explicit F.pad are real input and may be wider.
            reach = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dilation, strict=True)]
            if max(top, bottom) > reach[0] or max(left, right) > reach[1]:
                raise self.fail(
                    f"padding {list(padding)} exceeds half the kernel {list(kernel)}; "
                    "a window would hold padding only."
                )
        ceil = self.ceil_mode is not None
        expected = (
            x[0],
            x[1],
            window_out(x[2], kernel[0], strides[0], top, bottom, dilation[0], ceil),
            window_out(x[3], kernel[1], strides[1], left, right, dilation[1], ceil),
        )
        check_result_shape(self, expected, self.output)
        check_same_element(self, self.input, self.output, "the result")


_POOL_FORMAT = "`kernel` $kernel `stride` $strides `pad` $padding"


@irdl_op_definition
class MaxPool2DOp(_Pool2DOp):
    """Max pooling. Padding is -inf as in torch, or zeros with `zero_pad` (a folded `F.pad`)."""

    name = "qnn.max_pool2d"
    dilation = prop_def(DenseArrayBase.constr(i64))
    zero_pad = opt_prop_def(UnitAttr)
    assembly_format = (
        f"$input {_POOL_FORMAT} `dilation` $dilation (`zero_pad` $zero_pad^)? "
        "(`ceil_mode` $ceil_mode^)? `at` $path attr-dict `:` type($input) `->` type($output)"
    )

    def __init__(
        self,
        input: SSAValue,
        result_type: Attribute,
        *,
        kernel: tuple[int, int],
        strides: tuple[int, int],
        padding: tuple[int, ...],
        dilation: tuple[int, int],
        ceil_mode: bool,
        zero_pad: bool,
        path: str,
    ):
        super().__init__(
            operands=[input],
            result_types=[result_type],
            properties={
                "kernel": i64_array(kernel),
                "strides": i64_array(strides),
                "padding": i64_array(padding),
                "dilation": i64_array(dilation),
                "ceil_mode": UnitAttr() if ceil_mode else None,
                "zero_pad": UnitAttr() if zero_pad else None,
                "path": StringAttr(path),
            },
        )

    def verify_(self) -> None:
        dilation = ints(self.dilation)
        check_len(self, "dilation", dilation, 2, 1)
        self.verify_pool((dilation[0], dilation[1]), implicit_pad=self.zero_pad is None)


@irdl_op_definition
class AvgPool2DOp(_Pool2DOp):
    """Average pooling; padded zeros count in the divisor when `count_include_pad` is set."""

    name = "qnn.avg_pool2d"
    count_include_pad = opt_prop_def(UnitAttr)
    assembly_format = (
        f"$input {_POOL_FORMAT} (`count_include_pad` $count_include_pad^)? "
        "(`ceil_mode` $ceil_mode^)? `at` $path attr-dict `:` type($input) `->` type($output)"
    )

    def __init__(
        self,
        input: SSAValue,
        result_type: Attribute,
        *,
        kernel: tuple[int, int],
        strides: tuple[int, int],
        padding: tuple[int, ...],
        ceil_mode: bool,
        count_include_pad: bool,
        path: str,
    ):
        super().__init__(
            operands=[input],
            result_types=[result_type],
            properties={
                "kernel": i64_array(kernel),
                "strides": i64_array(strides),
                "padding": i64_array(padding),
                "ceil_mode": UnitAttr() if ceil_mode else None,
                "count_include_pad": UnitAttr() if count_include_pad else None,
                "path": StringAttr(path),
            },
        )

    def verify_(self) -> None:
        self.verify_pool(implicit_pad=self.count_include_pad is None)


@irdl_op_definition
class GlobalAvgPoolOp(QnnOp):
    """Mean over the spatial axes: NCHW to NC11 (adaptive average pooling to 1x1)."""

    name = "qnn.global_avg_pool"
    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input `at` $path attr-dict `:` type($input) `->` type($output)"

    def __init__(self, input: SSAValue, result_type: Attribute, *, path: str):
        super().__init__(
            operands=[input], result_types=[result_type], properties={"path": StringAttr(path)}
        )

    def verify_(self) -> None:
        x = shape(self.input)
        if len(x) != 4:
            raise self.fail(f"expects a rank-4 NCHW input, got {list(x)}.")
        check_result_shape(self, (x[0], x[1], 1, 1), self.output)
        check_same_element(self, self.input, self.output, "the result")


@irdl_op_definition
class ReshapeOp(QnnOp):
    """The same elements in the same order under a new shape (flatten, view)."""

    name = "qnn.reshape"
    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    traits = traits_def(Pure())
    assembly_format = "$input `at` $path attr-dict `:` type($input) `->` type($output)"

    def __init__(self, input: SSAValue, result_type: Attribute, *, path: str):
        super().__init__(
            operands=[input], result_types=[result_type], properties={"path": StringAttr(path)}
        )

    def verify_(self) -> None:
        size_in, size_out = math.prod(shape(self.input)), math.prod(shape(self.output))
        if size_in != size_out:
            raise self.fail(
                f"cannot reshape {list(shape(self.input))} ({size_in} elements) to "
                f"{list(shape(self.output))} ({size_out} elements)."
            )
        check_same_element(self, self.input, self.output, "the result")


@irdl_op_definition
class ConcatOp(QnnOp):
    """Concatenate tensors along `axis`; all other dimensions must agree."""

    name = "qnn.concat"
    inputs = var_operand_def(AnyTensor)
    output = result_def(AnyTensor)
    axis = prop_def(IntegerAttr.constr(type=i64))
    traits = traits_def(Pure())
    assembly_format = (
        "$inputs `axis` $axis `at` $path attr-dict `:` functional-type(operands, results)"
    )

    def __init__(self, inputs: list[SSAValue], result_type: Attribute, *, axis: int, path: str):
        super().__init__(
            operands=[inputs],
            result_types=[result_type],
            properties={"axis": IntegerAttr(axis, i64), "path": StringAttr(path)},
        )

    def verify_(self) -> None:
        if not self.inputs:
            raise self.fail("needs at least one input.")
        first = shape(self.inputs[0])
        axis = self.axis.value.data
        if not 0 <= axis < len(first):
            raise self.fail(f"axis {axis} is outside the rank {len(first)} of the inputs.")
        for i, value in enumerate(self.inputs):
            other = shape(value)
            if len(other) != len(first) or any(
                a != b for d, (a, b) in enumerate(zip(first, other, strict=True)) if d != axis
            ):
                raise self.fail(
                    f"input {i} has shape {list(other)}, which differs from "
                    f"{list(first)} outside axis {axis}."
                )
            check_same_element(self, self.inputs[0], value, f"input {i}")
        expected = list(first)
        expected[axis] = sum(shape(v)[axis] for v in self.inputs)
        check_result_shape(self, expected, self.output)
