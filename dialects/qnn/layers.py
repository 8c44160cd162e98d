"""`qnn` ops with weights: constants, convolution, fully connected layers and batch norm.

Tensors are NCHW; conv weights OIHW (I = input channels per group); linear weights [out, in].
A float layer computes in f32. An integer layer (after `quantize`) takes si/ui operands and
accumulates into si32, with the bias already at the accumulator's scale. A float conv2d/linear
may carry the widths chosen for it as `bits = #qnn.bits<w4a8>` (see `BitsAttr`).
"""

from __future__ import annotations

import re
from typing import ClassVar, cast

import numpy as np
from xdsl.dialects.builtin import (
    BytesAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    StringAttr,
    TensorType,
    f32,
    i64,
)
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import (
    AnyAttr,
    IRDLOperation,
    ParamAttrConstraint,
    VarConstraint,
    base,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
)
from xdsl.traits import ConstantLike, Pure
from xdsl.utils.exceptions import VerifyException

from dopant.dialects.qnn.attrs import BITS_ATTR, ActivationAttr, BitsAttr, QuantParamsAttr
from dopant.dialects.qnn.base import (
    QnnOp,
    check_len,
    check_result_shape,
    element,
    i64_array,
    ints,
    is_float,
    shape,
)
from dopant.dialects.shapes import window_out

AnyTensor = base(TensorType)
ACC_TYPE = IntegerType(32, Signedness.SIGNED)

_NUMPY_OF = {
    "f32": np.float32,
    "f64": np.float64,
    "si32": np.int32,
    "i32": np.int32,
    "i64": np.int64,
    "si64": np.int64,
}


def ssa_name(text: str) -> str:
    """`text` made a valid SSA value name: other characters become `_`, never a leading digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if name[:1].isalpha() or name[:1] == "_" else f"v{name}"


def numpy_dtype(elem: Attribute) -> np.dtype:
    """The numpy dtype that stores one element of `elem` (sub-byte ints take a whole byte)."""
    if isinstance(elem, IntegerType) and elem.width.data <= 8:
        unsigned = elem.signedness.data == Signedness.UNSIGNED
        return np.dtype(np.uint8 if unsigned else np.int8)
    if str(elem) not in _NUMPY_OF:
        raise ValueError(f"Element type {elem} has no numpy storage in dopant.")
    return np.dtype(_NUMPY_OF[str(elem)])


def dense(array: np.ndarray, elem: Attribute = f32) -> DenseIntOrFPElementsAttr:
    """A dense constant built from the bytes of `array` (fast even for millions of weights)."""
    data = np.ascontiguousarray(array, dtype=numpy_dtype(elem))
    tensor = TensorType(cast(IntegerType | Float32Type, elem), data.shape)
    return DenseIntOrFPElementsAttr(tensor, BytesAttr(data.tobytes()))


def to_numpy(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The values of a dense constant as a read-only numpy array (no copy)."""
    elem = attr.get_element_type()
    return np.frombuffer(attr.data.data, numpy_dtype(elem)).reshape(attr.get_shape())


@irdl_op_definition
class ConstantOp(IRDLOperation):
    """A constant tensor: weights, biases and batch-norm statistics.

    `value` holds the data; `params` (optional) are the quantization parameters of an integer
    constant (per output channel for weights); `path` (optional) names the torch parameter.
    """

    name = "qnn.constant"
    T: ClassVar = VarConstraint("T", AnyAttr())
    value = prop_def(ParamAttrConstraint(DenseIntOrFPElementsAttr, (T, AnyAttr())))
    params = opt_prop_def(QuantParamsAttr)
    path = opt_prop_def(StringAttr)
    result = result_def(T)
    traits = traits_def(Pure(), ConstantLike())
    assembly_format = "$value (`params` $params^)? (`at` $path^)? attr-dict"

    def __init__(
        self,
        value: DenseIntOrFPElementsAttr,
        path: str | None = None,
        params: QuantParamsAttr | None = None,
    ):
        props: dict[str, Attribute | None] = {"value": value, "params": params}
        props["path"] = StringAttr(path) if path is not None else None
        super().__init__(properties=props, result_types=[value.type])

    @staticmethod
    def of(
        array: np.ndarray,
        path: str | None = None,
        elem: Attribute = f32,
        params: QuantParamsAttr | None = None,
    ) -> ConstantOp:
        """A constant holding `array`, its SSA name taken from `path` (`conv1.weight` ->
        `%conv1_weight`)."""
        op = ConstantOp(dense(array, elem), path, params)
        if path:
            op.result.name_hint = ssa_name(path)
        return op

    @staticmethod
    def quantized(array: np.ndarray, params: QuantParamsAttr, path: str | None) -> ConstantOp:
        """An integer constant stored in the type its parameters name (si8, ui4, si32, ...)."""
        return ConstantOp.of(array, path, params.element_type, params)

    def numpy(self) -> np.ndarray:
        return to_numpy(self.value)

    def _fail(self, message: str) -> VerifyException:
        where = f' at "{self.path.data}"' if self.path else ""
        return VerifyException(f"qnn.constant{where}: {message}")

    def verify_(self) -> None:
        elem = self.value.get_element_type()
        if self.params is not None:
            dims = tuple(self.value.get_shape())
            if elem != self.params.element_type:
                raise self._fail(
                    f"the element type {elem} does not match the parameters' "
                    f"{self.params.element_type}."
                )
            axis = self.params.axis.data
            if self.params.is_per_channel and (
                axis >= len(dims) or len(self.params.scale) != dims[axis]
            ):
                raise self._fail(
                    f"per-channel parameters along axis {axis} give "
                    f"{len(self.params.scale)} scales for shape {list(dims)}."
                )
        if not isinstance(elem, IntegerType) or elem.width.data >= 8:
            return
        # Sub-byte values are stored a byte each, so the type does not bound them by itself.
        values = self.numpy()
        bits, signed = elem.width.data, elem.signedness.data != Signedness.UNSIGNED
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if values.size and (values.min() < lo or values.max() > hi):
            raise self._fail(
                f"values span [{values.min()}, {values.max()}], outside the range "
                f"[{lo}, {hi}] of {elem}."
            )


def _check_layer_types(
    op: QnnOp, x: SSAValue, w: SSAValue, b: SSAValue | None, out: SSAValue
) -> None:
    """Float layers are f32 throughout; integer layers take ints and accumulate into si32."""
    if is_float(x):
        for value, what in ((w, "weight"), (b, "bias"), (out, "result")):
            if value is not None and not is_float(value):
                raise op.fail(f"the input is f32, so the {what} must be f32 too.")
        return
    for value, what in ((x, "input"), (w, "weight")):
        if is_float(value):
            raise op.fail(f"the {what} is f32 but the layer is an integer layer.")
    if getattr(op, "act", None) is not None:
        raise op.fail(
            "an integer layer's accumulator takes no activation; fuse it into the "
            "qnn.requantize that follows."
        )
    for value, what in ((b, "bias"), (out, "result")):
        if value is not None and element(value) != ACC_TYPE:
            raise op.fail(f"an integer layer's {what} must be {ACC_TYPE} (the accumulator).")


def _check_bits(op: QnnOp, x: SSAValue) -> None:
    """The widths chosen for a layer are a `#qnn.bits`, and only a float layer has a choice."""
    chosen = op.attributes.get(BITS_ATTR)
    if chosen is None:
        return
    if not isinstance(chosen, BitsAttr):
        raise op.fail(
            f"the `{BITS_ATTR}` attribute must be a #qnn.bits such as #qnn.bits<w8a8>, "
            f"got {chosen}."
        )
    if not is_float(x):
        raise op.fail(
            f"an integer layer's widths are in its types, so it takes no `{BITS_ATTR}` "
            "attribute; set widths on the float layer, before quantize."
        )


@irdl_op_definition
class Conv2DOp(QnnOp):
    """2-D convolution over NCHW input, optionally grouped or depthwise, with a fused activation.

    `strides` and `dilation` are [h, w]; `padding` is [top, bottom, left, right] zeros (asymmetric
    padding from `F.pad` is folded in); `groups` splits channels; `act` clamps the result.
    """

    name = "qnn.conv2d"
    input = operand_def(AnyTensor)
    weight = operand_def(AnyTensor)
    bias = opt_operand_def(AnyTensor)
    output = result_def(AnyTensor)
    strides = prop_def(DenseArrayBase.constr(i64))
    padding = prop_def(DenseArrayBase.constr(i64))
    dilation = prop_def(DenseArrayBase.constr(i64))
    groups = prop_def(IntegerAttr.constr(type=i64))
    act = opt_prop_def(ActivationAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $weight (`,` $bias^)? `stride` $strides `pad` $padding `dilation` $dilation "
        "`groups` $groups (`act` $act^)? `at` $path attr-dict `:` "
        "functional-type(operands, results)"
    )

    def __init__(
        self,
        input: SSAValue,
        weight: SSAValue,
        bias: SSAValue | None,
        result_type: Attribute,
        *,
        strides: tuple[int, int],
        padding: tuple[int, ...],
        dilation: tuple[int, int],
        groups: int,
        path: str,
        act: ActivationAttr | None = None,
    ):
        super().__init__(
            operands=[input, weight, bias],
            result_types=[result_type],
            properties={
                "strides": i64_array(strides),
                "padding": i64_array(padding),
                "dilation": i64_array(dilation),
                "groups": IntegerAttr(groups, i64),
                "path": StringAttr(path),
                "act": act,
            },
        )

    def verify_(self) -> None:
        x, w = shape(self.input), shape(self.weight)
        if len(x) != 4 or len(w) != 4:
            raise self.fail(
                f"expects a rank-4 NCHW input and OIHW weight, got {list(x)} and {list(w)}."
            )
        strides, padding, dilation = ints(self.strides), ints(self.padding), ints(self.dilation)
        check_len(self, "strides", strides, 2, 1)
        check_len(self, "padding", padding, 4, 0)
        check_len(self, "dilation", dilation, 2, 1)
        groups = self.groups.value.data
        n, c, h, wd = x
        o, ci, kh, kw = w
        if groups < 1 or c % groups or o % groups:
            raise self.fail(f"groups={groups} must divide the {c} input and {o} output channels.")
        if ci * groups != c:
            raise self.fail(
                f"the weight takes {ci} channels per group, so the input needs "
                f"{ci * groups} channels with groups={groups}, but it has {c}."
            )
        if self.bias is not None and shape(self.bias) != (o,):
            raise self.fail(f"the bias must have shape [{o}], got {list(shape(self.bias))}.")
        top, bottom, left, right = padding
        expected = (
            n,
            o,
            window_out(h, kh, strides[0], top, bottom, dilation[0]),
            window_out(wd, kw, strides[1], left, right, dilation[1]),
        )
        check_result_shape(self, expected, self.output)
        _check_layer_types(self, self.input, self.weight, self.bias, self.output)
        _check_bits(self, self.input)

    @property
    def is_depthwise(self) -> bool:
        return self.groups.value.data == shape(self.input)[1] and shape(self.weight)[1] == 1


@irdl_op_definition
class LinearOp(QnnOp):
    """Fully connected layer y = x W^T + b on [batch, features] input, with a fused activation."""

    name = "qnn.linear"
    input = operand_def(AnyTensor)
    weight = operand_def(AnyTensor)
    bias = opt_operand_def(AnyTensor)
    output = result_def(AnyTensor)
    act = opt_prop_def(ActivationAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $weight (`,` $bias^)? (`act` $act^)? `at` $path attr-dict `:` "
        "functional-type(operands, results)"
    )

    def __init__(
        self,
        input: SSAValue,
        weight: SSAValue,
        bias: SSAValue | None,
        result_type: Attribute,
        *,
        path: str,
        act: ActivationAttr | None = None,
    ):
        super().__init__(
            operands=[input, weight, bias],
            result_types=[result_type],
            properties={"path": StringAttr(path), "act": act},
        )

    def verify_(self) -> None:
        x, w = shape(self.input), shape(self.weight)
        if len(x) != 2 or len(w) != 2:
            raise self.fail(f"expects a rank-2 input and weight, got {list(x)} and {list(w)}.")
        if x[1] != w[1]:
            raise self.fail(f"the input has {x[1]} features but the weight expects {w[1]}.")
        if self.bias is not None and shape(self.bias) != (w[0],):
            raise self.fail(f"the bias must have shape [{w[0]}], got {list(shape(self.bias))}.")
        check_result_shape(self, (x[0], w[0]), self.output)
        _check_layer_types(self, self.input, self.weight, self.bias, self.output)
        _check_bits(self, self.input)


@irdl_op_definition
class BatchNormOp(QnnOp):
    """Inference batch norm over channel axis 1: y = (x - mean) / sqrt(var + eps) * scale + shift.

    Float only; `fold-batchnorm` folds it into the conv or linear layer before it.
    """

    name = "qnn.batch_norm"
    input = operand_def(AnyTensor)
    scale = operand_def(AnyTensor)
    shift = operand_def(AnyTensor)
    mean = operand_def(AnyTensor)
    var = operand_def(AnyTensor)
    output = result_def(AnyTensor)
    eps = prop_def(FloatAttr[Float64Type])
    traits = traits_def(Pure())
    assembly_format = (
        "$input `,` $scale `,` $shift `,` $mean `,` $var `eps` $eps `at` $path attr-dict `:` "
        "functional-type(operands, results)"
    )

    def __init__(
        self,
        input: SSAValue,
        scale: SSAValue,
        shift: SSAValue,
        mean: SSAValue,
        var: SSAValue,
        *,
        eps: float,
        path: str,
    ):
        super().__init__(
            operands=[input, scale, shift, mean, var],
            result_types=[input.type],
            properties={"eps": FloatAttr(eps, 64), "path": StringAttr(path)},
        )

    def verify_(self) -> None:
        x = shape(self.input)
        if len(x) not in (2, 4):
            raise self.fail(f"expects a rank-2 or rank-4 input, got {list(x)}.")
        for value, what in (
            (self.scale, "scale"),
            (self.shift, "shift"),
            (self.mean, "mean"),
            (self.var, "var"),
        ):
            if shape(value) != (x[1],):
                raise self.fail(
                    f"{what} must have one value per channel, shape [{x[1]}], "
                    f"got {list(shape(value))}."
                )
            if not is_float(value):
                raise self.fail(f"{what} must be f32.")
        if not is_float(self.input) or self.output.type != self.input.type:
            raise self.fail(
                "batch norm is float only: input and result must be the same f32 tensor type."
            )
        if not self.eps.value.data > 0:
            raise self.fail(f"eps must be positive, got {self.eps.value.data}.")
