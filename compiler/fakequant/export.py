"""Writing a trained `FakeQuantNetwork` back as integer IR (`FakeQuantNetwork.export`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from dopant.compiler.fakequant.build import Program
from dopant.compiler.fakequant.nodes import FakeQuantLayer
from dopant.compiler.irio import verify
from dopant.dialects.qnn import (
    AddOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    LinearOp,
    QuantizeOp,
    QuantParamsAttr,
    RequantizeOp,
)
from dopant.dialects.qnn.layers import dense


def _with_scales(params: QuantParamsAttr, scales: Tensor) -> QuantParamsAttr:
    """`params` (width, signedness, axis) with new scales and zero points 0."""
    values = scales.detach().reshape(-1).tolist()
    axis = params.axis.data
    return QuantParamsAttr.get(values, [0] * len(values), params.bits.data, params.is_signed, axis)


def _set_constant(op: object, q: Tensor, scales: Tensor) -> None:
    assert isinstance(op, ConstantOp) and op.params is not None, "checked when the net was built"
    params = _with_scales(op.params, scales)
    op.properties["value"] = dense(q.detach().numpy().astype(np.int64), params.element_type)
    op.properties["params"] = params


class _Writer:
    """Updates the clone `dst` of each source op from the learned values."""

    def __init__(
        self,
        program: Program,
        steps: Mapping[str, Tensor],
        layers: Mapping[str, FakeQuantLayer],
    ) -> None:
        self.program = program
        self.steps = steps
        self.layers = layers
        self.accumulators: dict[SSAValue, Tensor] = {}

    def step(self, value: SSAValue) -> Tensor:
        return self.steps[self.program.step_of[value]]

    def write(self, src: Operation, dst: Operation) -> None:
        if isinstance(src, QuantizeOp):
            dst.properties["params"] = _with_scales(src.params, self.step(src.output))
        elif isinstance(src, Conv2DOp | LinearOp):
            assert isinstance(dst, Conv2DOp | LinearOp)
            self._layer(src, dst)
        elif isinstance(src, RequantizeOp):
            acc = self.accumulators.get(src.input)
            in_scales = acc if acc is not None else self.step(src.input)
            dst.properties["in_params"] = _with_scales(src.in_params, in_scales)
            dst.properties["out_params"] = _with_scales(src.out_params, self.step(src.output))
        elif isinstance(src, AddOp):
            params = src.params
            assert params is not None, "integer adds carry parameters"
            values = (src.lhs, src.rhs, src.output)
            for name, p, value in zip(("lhs", "rhs", "out"), params, values, strict=True):
                dst.properties[f"{name}_params"] = _with_scales(p, self.step(value))
        elif isinstance(src, DequantizeOp):
            dst.properties["params"] = _with_scales(src.params, self.step(src.input))

    def _layer(self, src: Conv2DOp | LinearOp, dst: Conv2DOp | LinearOp) -> None:
        layer = self.layers[self.program.layer_of[src]]
        step = layer.step()
        scale = layer.accumulator_scale(self.step(src.input), step)
        self.accumulators[src.output] = scale
        _set_constant(dst.weight.owner, layer.quantized_weight(step), step)
        bias = layer.quantized_bias(scale)
        if bias is not None and dst.bias is not None:
            _set_constant(dst.bias.owner, bias, scale)


def export_ir(
    source: ModuleOp,
    program: Program,
    steps: Mapping[str, Tensor],
    layers: Mapping[str, FakeQuantLayer],
) -> ModuleOp:
    """A clone of `source` (the IR `program` was built from) carrying the learned integers and
    scales: weights and their per-channel scales, int32 biases at the new S_x * S_w, and the
    parameters of every quantize, requantize (in and out), add and dequantize. Op paths, types
    and everything else are kept. `steps` maps every step key to the step the forward pass uses.
    """
    clone = source.clone()
    writer = _Writer(program, steps, layers)
    with torch.no_grad():
        for src, dst in zip(source.walk(), clone.walk(), strict=True):
            writer.write(src, dst)
    verify(clone, "after exporting the fake-quant network (a dopant bug: please report it)")
    return clone
