"""The rewrite `quantize` performs: a new, integer body for `@forward`, op by op.

float                              integer
%x (argument)                      %q = qnn.quantize %x
conv2d/linear (act)                conv2d/linear on ints -> si32, then requantize (act)
add (act)                          add with both operands rescaled to the result's scale
clamp (ReLU6 left standalone)      requantize to the same parameters with the clamp
pools, reshape, relu, concat       the same op on ints (concat inputs share parameters)
func.return %y                     qnn.dequantize, then func.return

A conv/linear whose bias would not fit the int32 accumulator gets a wider weight scale
(`numerics.bias_scale_floor`) and leaves a note in `Lowering.notes` naming the layer and channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from xdsl.builder import Builder
from xdsl.dialects.builtin import TensorType
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.irdl import IRDLOperation
from xdsl.rewriter import InsertPoint

from dopant.dialects.qnn import (
    ActivationAttr,
    AddOp,
    ClampOp,
    ConcatOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    LinearOp,
    QnnOp,
    QuantizeOp,
    QuantParamsAttr,
    RequantizeOp,
)
from dopant.dialects.qnn.layers import ACC_TYPE
from dopant.dialects.qnn.values import requantized_path
from dopant.passes._quantize.numerics import (
    QuantizedWeight,
    bias_limit,
    bias_scale_floor,
    quantize_bias,
    quantize_weight,
)
from dopant.passes._quantize.plan import LayerBits
from dopant.support.errors import DopantError


@dataclass
class Lowering:
    """Builds the integer body; `values` maps each float value to its integer replacement."""

    params: dict[SSAValue, QuantParamsAttr]
    layers: dict[Operation, LayerBits]
    per_channel: bool
    weight_clip: str
    rounding: str
    block: Block = field(default_factory=Block)
    values: dict[SSAValue, SSAValue] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know, in op order

    def __post_init__(self) -> None:
        self.builder = Builder(InsertPoint.at_end(self.block))

    def emit(self, op: Operation) -> SSAValue:
        self.builder.insert(op)
        return op.results[0]

    def requantize(
        self,
        value: SSAValue,
        source: QuantParamsAttr,
        target: QuantParamsAttr,
        path: str,
        act: ActivationAttr | None = None,
    ) -> SSAValue:
        return self.emit(
            RequantizeOp(value, source, target, path=path, rounding=self.rounding, act=act)
        )

    def lower(self, fn: FuncOp) -> Block:
        (arg,) = fn.body.block.args
        new_arg = self.block.insert_arg(arg.type, 0)
        new_arg.name_hint = arg.name_hint
        self.values[arg] = self.emit(QuantizeOp(new_arg, self.params[arg], path="input"))
        for op in fn.body.block.ops:
            if isinstance(op, ConstantOp):
                continue  # layers quantize their own weights; other constants die with floats
            if isinstance(op, ReturnOp):
                self._return(op)
            elif isinstance(op, Conv2DOp | LinearOp):
                self._layer(op)
            elif isinstance(op, AddOp):
                self._add(op)
            elif isinstance(op, ClampOp):
                act = ActivationAttr.clamp(*op.bounds)
                self.values[op.output] = self.requantize(
                    self.values[op.input],
                    self.params[op.input],
                    self.params[op.output],
                    op.path.data,
                    act,
                )
            elif isinstance(op, ConcatOp):
                self._concat(op)
            elif isinstance(op, QnnOp):
                self._same_op(op)
            else:
                raise DopantError(f"quantize cannot handle {op.name} in @forward.")
        return self.block

    def _layer(self, op: Conv2DOp | LinearOp) -> None:
        weight, bias = op.weight.owner, op.bias.owner if op.bias is not None else None
        if not isinstance(weight, ConstantOp) or (
            op.bias is not None and not isinstance(bias, ConstantOp)
        ):
            raise DopantError(f"{op.where}: quantize needs constant weights and bias.")
        constant_bias = bias if isinstance(bias, ConstantOp) else None
        new_w, new_b, acc_scales = self._constants(op, weight, constant_bias)
        acc_type = TensorType(ACC_TYPE, TensorType.get_shape(op.output.type))  # type: ignore[arg-type]
        properties = {k: v for k, v in op.properties.items() if k != "act"}
        layer = type(op).build(
            operands=[self.values[op.input], new_w, new_b],
            result_types=[acc_type],
            properties=properties,
        )
        acc = self.emit(layer)
        # The accumulator is per output channel: axis 1 of NCHW and of [batch, features].
        acc_axis = QuantParamsAttr.get(acc_scales.tolist(), [0] * len(acc_scales), 32, True, 1)
        self.values[op.output] = self.requantize(
            acc, acc_axis, self.params[op.output], requantized_path(op.path.data), op.act
        )

    def _constants(
        self, op: Conv2DOp | LinearOp, weight: ConstantOp, bias: ConstantOp | None
    ) -> tuple[SSAValue, SSAValue | None, np.ndarray]:
        """The integer weights and bias of a layer, and the accumulator's scales S_x * S_w.

        The weight scales are at least `bias_scale_floor`, so the int32 bias leaves the
        products room in the accumulator; a layer that needed that gets a note."""
        bits, x_params = self.layers[op], self.params[op.input]
        floats = weight.numpy()
        limit = bias_limit(floats[0].size, max(-x_params.qmin, x_params.qmax), bits.weight)
        biases = None if bias is None else bias.numpy()
        floor = None if biases is None else bias_scale_floor(biases, x_params.scales[0], limit)
        w = quantize_weight(floats, bits.weight, self.per_channel, self.weight_clip, floor)
        weight_path = weight.path.data if weight.path else f"{op.path.data}.weight"
        w_params = w.params(bits.weight, self.per_channel)
        new_w = self.emit(ConstantOp.quantized(w.values, w_params, weight_path))
        acc_scales = x_params.scales[0] * w.scales
        if bias is None or biases is None:
            return new_w, None, acc_scales
        if (note := widening_note(op.path.data, biases, w, self.per_channel)) is not None:
            self.notes.append(note)
        q_bias = quantize_bias(biases, acc_scales, limit, op.where)
        acc_params = QuantParamsAttr.get(acc_scales.tolist(), [0] * len(acc_scales), 32, True, 0)
        bias_path = bias.path.data if bias.path else f"{op.path.data}.bias"
        return new_w, self.emit(ConstantOp.quantized(q_bias, acc_params, bias_path)), acc_scales

    def _add(self, op: AddOp) -> None:
        triple = (self.params[op.lhs], self.params[op.rhs], self.params[op.output])
        add = AddOp(
            self.values[op.lhs],
            self.values[op.rhs],
            path=op.path.data,
            act=op.act,
            params=triple,
            rounding=self.rounding,
        )
        self.values[op.output] = self.emit(add)

    def _concat(self, op: ConcatOp) -> None:
        target = self.params[op.output]
        inputs = []
        for i, value in enumerate(op.inputs):
            new = self.values[value]
            if self.params[value] != target:
                new = self.requantize(
                    new, self.params[value], target, f"{op.path.data}/requantize_{i}"
                )
            inputs.append(new)
        self.values[op.output] = self.emit(
            ConcatOp(
                inputs, _int_type(op.output, target), axis=op.axis.value.data, path=op.path.data
            )
        )

    def _same_op(self, op: QnnOp) -> None:
        """Ops that only move values: the same op on the integer input, same parameters."""
        assert isinstance(op, IRDLOperation)
        new_input = self.values[op.operands[0]]
        result_type = _int_type(op.results[0], self.params[op.operands[0]])
        self.values[op.results[0]] = self.emit(
            type(op).build(
                operands=[new_input], result_types=[result_type], properties=dict(op.properties)
            )
        )

    def _return(self, op: ReturnOp) -> None:
        outputs = []
        for i, value in enumerate(op.operands):
            new = DequantizeOp(
                self.values[value],
                self.params[value],
                value.type,
                path=f"output{i}" if i else "output",
            )
            outputs.append(self.emit(new))
        self.builder.insert(ReturnOp(*outputs))


def _int_type(value: SSAValue, params: QuantParamsAttr) -> TensorType:
    ty = value.type
    assert isinstance(ty, TensorType)
    return TensorType(params.element_type, ty.get_shape())


def _listed(channels: np.ndarray, shown: int = 8) -> str:
    """`0, 5, 7` or `0, 1, ..., 7 and 12 more`: channel indices for a message."""
    text = ", ".join(str(c) for c in channels[:shown])
    return text + (f" and {len(channels) - shown} more" if len(channels) > shown else "")


def widening_note(path: str, bias: np.ndarray, w: QuantizedWeight, per_channel: bool) -> str | None:
    """The note for a layer whose weight scales were widened so its bias fits, or None.

    Names the layer by its torch module path and the output channels whose bias forced the
    widening; says how far the scales moved and how many weight levels remain in use (0: the
    channel's weights quantize to zeros and it outputs its bias)."""
    widened = np.flatnonzero(w.scales > w.unwidened)
    if widened.size == 0:
        return None
    factor = float((w.scales / w.unwidened)[widened].max())
    used = int(np.abs(w.values.reshape(len(w.scales), -1))[widened].max())
    # Per tensor, the largest |bias| sets the one scale (bias_scale_floor's maximum).
    culprits = widened if per_channel else np.flatnonzero(np.abs(bias) == np.abs(bias).max())
    plural = "s" if len(culprits) > 1 else ""
    scale = f"the weight scale{plural}" if per_channel else "the layer's weight scale"
    result = (
        "the weights now quantize to 0, so the output is the bias"
        if used == 0
        else f"the weights now use integers up to +-{used}"
    )
    return (
        f'layer "{path}", output channel{plural} {_listed(culprits)}: the int32 bias would '
        f"overflow at the weights' own scale, so {scale} widened {factor:.3g}x (as TFLite does); "
        f"{result}"
    )


def replace_body(fn: FuncOp, block: Block) -> None:
    """Swap `fn`'s body for `block` (the signature is unchanged: float in, float out)."""
    old = fn.body.block
    fn.body.insert_block_before(block, old)
    fn.body.detach_block(old)
    old.erase(safe_erase=False)
