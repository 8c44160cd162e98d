"""The plan `quantize` follows: bits per layer, bits and parameters per activation.

A layer's (w_bits, a_bits) are the widths of its weights and of the activation it reads, the
two operands of its multiplies (HAQ, HAWQ-V3); a layer's own `#qnn.bits` attribute chooses them
over `quantize`'s options. An activation is stored at the widest a_bits any layer reading it
asks for; ops that only move values (pooling, reshape, ReLU, concat, add) pass the demand of
their own result back to their inputs. Every activation then gets per-tensor parameters from
its calibrated range at that width; ops that only move values keep the parameters of their input.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import DictionaryAttr
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from dopant.dialects.qnn import (
    AddOp,
    AvgPool2DOp,
    BitsAttr,
    CalibrationAttr,
    ClampOp,
    ConcatOp,
    ConstantOp,
    Conv2DOp,
    GlobalAvgPoolOp,
    LinearOp,
    MaxPool2DOp,
    QnnOp,
    QuantParamsAttr,
    ReluOp,
    ReshapeOp,
)
from dopant.dialects.qnn.attrs import BITS_ATTR
from dopant.passes._quantize.numerics import activation_params
from dopant.support.errors import DopantError

LAYERS = (Conv2DOp, LinearOp)
PASS_THROUGH = (MaxPool2DOp, AvgPool2DOp, GlobalAvgPoolOp, ReshapeOp, ReluOp)


@dataclass(frozen=True)
class LayerBits:
    """The widths of a layer's weights and of the input activation it multiplies them with."""

    weight: int
    act: int


def layer_bits(
    fn: FuncOp, weight_bits: int, act_bits: int, first_last_bits: int
) -> dict[Operation, LayerBits]:
    """Bits per conv/linear layer. Each width is, from the most specific choice down: the one in
    the layer's `bits` attribute (`#qnn.bits<w8a8>`, `<w4>`, `<a4>`), `first_last_bits` for the
    first and last layer (0: off), the defaults `weight_bits` and `act_bits`."""
    layers = [op for op in fn.body.walk() if isinstance(op, LAYERS)]
    bits: dict[Operation, LayerBits] = {op: LayerBits(weight_bits, act_bits) for op in layers}
    if first_last_bits and layers:
        for op in (layers[0], layers[-1]):
            bits[op] = LayerBits(first_last_bits, first_last_bits)
    for op, chosen in chosen_bits(fn).items():
        bits[op] = LayerBits(chosen.weight.data or bits[op].weight, chosen.act.data or bits[op].act)
    return bits


def chosen_bits(fn: FuncOp) -> dict[Conv2DOp | LinearOp, BitsAttr]:
    """The layers that carry a `bits` attribute, with it, in program order."""
    chosen: dict[Conv2DOp | LinearOp, BitsAttr] = {}
    for op in fn.body.walk():
        if not isinstance(op, LAYERS) or (bits := op.attributes.get(BITS_ATTR)) is None:
            continue
        if not isinstance(bits, BitsAttr):  # the layer verifiers refuse it in verified IR
            raise DopantError(
                f"{op.where} has `{BITS_ATTR} = {bits}`; write the widths as #qnn.bits<w8a8>."
            )
        chosen[op] = bits
    return chosen


def _tensor_operands(op: Operation) -> list[SSAValue]:
    return [v for v in op.operands if not isinstance(v.owner, ConstantOp)]


def value_bits(
    fn: FuncOp, layers: dict[Operation, LayerBits], act_bits: int, output_bits: int
) -> dict[SSAValue, int]:
    """The storage width of every activation: the widest width any reader asks for."""
    demand: dict[SSAValue, int] = {}

    def ask(value: SSAValue, bits: int) -> None:
        demand[value] = max(demand.get(value, 0), bits)

    for op in reversed(list(fn.body.walk())):
        if isinstance(op, ReturnOp):
            for v in op.operands:
                ask(v, output_bits)
        elif isinstance(op, LAYERS):
            ask(op.input, layers[op].act)
        elif isinstance(op, QnnOp):
            own = demand.get(op.results[0], act_bits)
            for v in _tensor_operands(op):
                ask(v, own)
    return demand


def _calibration(op: QnnOp) -> CalibrationAttr:
    calib = op.attributes.get("calib")
    assert isinstance(calib, CalibrationAttr), "checked by QuantizePass before planning"
    return calib


def _range(calib: CalibrationAttr, bits: int, where: str) -> tuple[float, float]:
    ranges = calib.ranges
    if bits not in ranges:
        raise DopantError(f"{where} has no calibrated range for {bits} bits; recalibrate.")
    return ranges[bits]


def arg_calibration(fn: FuncOp) -> CalibrationAttr | None:
    if fn.arg_attrs is None:
        return None
    attrs = fn.arg_attrs.data[0]
    assert isinstance(attrs, DictionaryAttr)
    calib = attrs.data.get("qnn.calib")
    return calib if isinstance(calib, CalibrationAttr) else None


def activation_plan(
    fn: FuncOp, bits: dict[SSAValue, int], act_bits: int
) -> dict[SSAValue, QuantParamsAttr]:
    """Per-tensor parameters of every activation (see the module docstring)."""
    params: dict[SSAValue, QuantParamsAttr] = {}
    (arg,) = fn.body.block.args
    calib = arg_calibration(fn)
    assert calib is not None, "checked by QuantizePass before planning"
    params[arg] = activation_params(
        *_range(calib, bits.get(arg, act_bits), "the input"), bits.get(arg, act_bits)
    )
    for op in fn.body.walk():
        if not isinstance(op, QnnOp):
            continue
        result = op.results[0]
        if isinstance(op, PASS_THROUGH):
            params[result] = params[op.operands[0]]
            continue
        width = bits.get(result, act_bits)
        params[result] = activation_params(*_range(_calibration(op), width, op.where), width)
    _share_concat_params(fn, params)
    return params


def _share_concat_params(fn: FuncOp, params: dict[SSAValue, QuantParamsAttr]) -> None:
    """An input of a concat that only the concat reads is produced directly at the concat's
    parameters, so no extra requantize is needed for it."""
    for op in fn.body.walk():
        if not isinstance(op, ConcatOp):
            continue
        for value in op.inputs:
            producer = value.owner
            if isinstance(producer, (*LAYERS, AddOp, ClampOp)) and value.has_one_use():
                params[value] = params[op.output]
