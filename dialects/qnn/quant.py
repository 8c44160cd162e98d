"""`qnn` ops that move between real and integer values: quantize, dequantize, requantize."""

from __future__ import annotations

from xdsl.dialects.builtin import StringAttr, TensorType
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import (
    base,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
)
from xdsl.traits import Pure

from dopant.dialects.qnn.attrs import ActivationAttr, QuantParamsAttr, check_rounding
from dopant.dialects.qnn.base import QnnOp, element, is_float, is_int, shape, with_shape

AnyTensor = base(TensorType)


def _check_params(op: QnnOp, params: QuantParamsAttr, value: SSAValue, what: str) -> None:
    """Per-channel parameters must name an axis of `value` and give one scale per channel."""
    if not params.is_per_channel:
        return
    axis, dims = params.axis.data, shape(value)
    if axis >= len(dims):
        raise op.fail(f"{what} parameters use axis {axis}, but the tensor has rank {len(dims)}.")
    if len(params.scale) != dims[axis]:
        raise op.fail(
            f"{what} parameters give {len(params.scale)} scales for the {dims[axis]} "
            f"channels of axis {axis}."
        )


def _check_storage(op: QnnOp, params: QuantParamsAttr, value: SSAValue, what: str) -> None:
    if element(value) != params.element_type:
        raise op.fail(
            f"the {what} must have element type {params.element_type} to match its "
            f"quantization parameters, got {element(value)}."
        )


@irdl_op_definition
class QuantizeOp(QnnOp):
    """Quantize real values: q = clamp(round(x / scale) + zp, qmin, qmax), rounding half to even."""

    name = "qnn.quantize"
    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    params = prop_def(QuantParamsAttr)
    traits = traits_def(Pure())
    assembly_format = "$input `to` $params `at` $path attr-dict `:` type($input) `->` type($output)"

    def __init__(self, input: SSAValue, params: QuantParamsAttr, *, path: str):
        super().__init__(
            operands=[input],
            result_types=[with_shape(input, shape(input), params.element_type)],
            properties={"params": params, "path": StringAttr(path)},
        )

    def verify_(self) -> None:
        if not is_float(self.input):
            raise self.fail(f"the input must be f32, got {element(self.input)}.")
        if shape(self.input) != shape(self.output):
            raise self.fail("the result must have the shape of the input.")
        _check_storage(self, self.params, self.output, "result")
        _check_params(self, self.params, self.input, "the")


@irdl_op_definition
class DequantizeOp(QnnOp):
    """Real values of a quantized tensor: x = scale * (q - zp)."""

    name = "qnn.dequantize"
    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    params = prop_def(QuantParamsAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `from` $params `at` $path attr-dict `:` type($input) `->` type($output)"
    )

    def __init__(
        self, input: SSAValue, params: QuantParamsAttr, result_type: Attribute, *, path: str
    ):
        super().__init__(
            operands=[input],
            result_types=[result_type],
            properties={"params": params, "path": StringAttr(path)},
        )

    def verify_(self) -> None:
        _check_storage(self, self.params, self.input, "input")
        if not is_float(self.output) or shape(self.output) != shape(self.input):
            raise self.fail("the result must be an f32 tensor of the input's shape.")
        _check_params(self, self.params, self.input, "the")


@irdl_op_definition
class RequantizeOp(QnnOp):
    """Rescale integers from one quantization to another with integer arithmetic only.

    q_out = clamp(zp_out + M * (q_in - zp_in)), M = scale_in / scale_out applied as an int32
    multiplier and a shift with the named `rounding`; `act` narrows the clamp (a fused ReLU).
    """

    name = "qnn.requantize"
    input = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    in_params = prop_def(QuantParamsAttr)
    out_params = prop_def(QuantParamsAttr)
    rounding = prop_def(StringAttr)
    act = opt_prop_def(ActivationAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `from` $in_params `to` $out_params `rounding` $rounding (`act` $act^)? "
        "`at` $path attr-dict `:` type($input) `->` type($output)"
    )

    def __init__(
        self,
        input: SSAValue,
        in_params: QuantParamsAttr,
        out_params: QuantParamsAttr,
        *,
        path: str,
        rounding: str = "gemmlowp",
        act: ActivationAttr | None = None,
    ):
        super().__init__(
            operands=[input],
            result_types=[with_shape(input, shape(input), out_params.element_type)],
            properties={
                "in_params": in_params,
                "out_params": out_params,
                "rounding": StringAttr(rounding),
                "act": act,
                "path": StringAttr(path),
            },
        )

    def verify_(self) -> None:
        if not is_int(self.input):
            raise self.fail(f"the input must be an integer tensor, got {element(self.input)}.")
        if shape(self.input) != shape(self.output):
            raise self.fail("the result must have the shape of the input.")
        check_rounding(self, self.rounding)
        _check_storage(self, self.in_params, self.input, "input")
        _check_storage(self, self.out_params, self.output, "result")
        _check_params(self, self.in_params, self.input, "the input")
        _check_params(self, self.out_params, self.output, "the result")
        axes = {p.axis.data for p in (self.in_params, self.out_params) if p.is_per_channel}
        if len(axes) > 1:
            raise self.fail(
                f"per-channel input and result parameters use different axes "
                f"{sorted(axes)}; requantize per channel along one axis."
            )
