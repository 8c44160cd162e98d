"""`convert-qnn-to-accel`: lower tiled integer `qnn` IR to an `accel` module."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.ir import BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from dopant.backend.config_attr import module_target
from dopant.backend.image import storage_range
from dopant.backend.target import AccelConfig
from dopant.dialects.accel import INSTRUCTION_OPS, TENSOR_ROLES, LayerOp, TensorOp
from dopant.dialects.isa import Instruction, IsaError
from dopant.dialects.qnn import (
    AddOp,
    ConcatOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    LinearOp,
    QnnOp,
    QuantizeOp,
    ReluOp,
    RequantizeOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import forward, shape
from dopant.dialects.qnn.values import output_params, value_names
from dopant.passes._convert_qnn_to_accel.conv import ConvDram, layer_op, lower_conv
from dopant.passes._convert_qnn_to_accel.dram import Dram
from dopant.passes._convert_qnn_to_accel.requant import layer_requant, requant
from dopant.passes._convert_qnn_to_accel.schedule import Schedule
from dopant.passes._convert_qnn_to_accel.vector import lower_vector
from dopant.passes.tiling.ops import VECTOR_OPS, plane, vector_shapes
from dopant.passes.tiling.plan import (
    ConvShape,
    Elem,
    conv_plan,
    fused_requantize,
    vector_plan,
)
from dopant.passes.tiling.vector import Plane
from dopant.runtime import intops
from dopant.support.errors import DopantError

DRAM_ATTR = "accel.dram_bytes"


@dataclass(frozen=True)
class ConvertQnnToAccelPass(ModulePass):
    """Lower tiled batch-1 integer `qnn` IR to one `accel` op per accelerator instruction.

    Expects: the output of `tile` (a `tile` plan on every op that computes, `accel.config` on
    the module): `@forward` from `qnn.quantize` of its input to `qnn.dequantize` of its
    results, with zero points 0.
    Guarantees: the module body becomes `accel.tensor` ops for the input (the host quantizes
    it with the quantize's parameters), the outputs (the values before dequantize, with
    their parameters: the host dequantizes) and every computed value (role `value`, named as
    `reference.trace` names it, for `dopant compare`), `accel.segment`s for weights (at
    their width), si32 biases and si32 multiplier tables (m0 then shift, from
    `intops.quantize_multipliers` as the reference computes them), an `accel.layer` per conv
    or linear (its untiled GEMM, for the fold model in statistics), and the instructions
    (`_convert_qnn_to_accel.conv`, `.vector`), each named by its layer's torch module path,
    ordered by tokens (`.schedule`);
    `accel.dram_bytes` gives the DRAM size (every value its own region, `.dram`; a
    reshape aliases its input, a concat copies its inputs into place). No `qnn` op remains,
    and `backend.emit` makes the binary, which the simulator runs bit-exact to the reference.
    Fails: without `accel.config` or a plan (run tile), on ops it cannot lower, nonzero zero
    points, per-channel results, or a plan that makes a field overflow (naming the op).
    """

    name = "convert-qnn-to-accel"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        lowering = lower_network(op)
        body = lowering.module_ops()
        for old in list(op.body.block.ops):
            old.detach()
            old.erase(safe_erase=False)
        op.body.block.add_ops(body)
        op.attributes[DRAM_ATTR] = IntegerAttr(lowering.dram.total, i64)


def lower_network(module: ModuleOp) -> Lowering:
    """The lowering of tiled `module` (not modified): its instructions in order with their
    tokens, its DRAM map, constants and I/O. The pass turns it into `accel` ops; the driver's
    latency oracle times its `instructions()` without building any."""
    layers = list(forward(module, "to lower").body.block.ops)
    lowering = Lowering(module_target(module), value_names(layers))
    for layer in layers:
        lowering.lower(layer)
    return lowering


@dataclass
class Lowering:
    """Walks `@forward` once, emitting instructions and placing values in DRAM."""

    config: AccelConfig
    names: dict[Operation, str]  # each value's name in the reference's trace
    dram: Dram = field(default_factory=Dram)
    schedule: Schedule = field(default_factory=Schedule)
    tensors: list[TensorOp] = field(default_factory=list)
    layers: list[LayerOp] = field(default_factory=list)
    fused: set[Operation] = field(default_factory=set)

    def lower(self, op: Operation) -> None:
        if isinstance(op, QuantizeOp):
            self._io("input", op.path.data, self.dram.value(op.output), op)
        elif isinstance(op, DequantizeOp):
            self._io("output", op.path.data, self.dram.address(op.input), op)
        elif isinstance(op, ReshapeOp):
            self.dram.alias(op.output, op.input)
        elif isinstance(op, Conv2DOp | LinearOp):
            self.schedule.barrier()
            self._layer(op)
        elif isinstance(op, VECTOR_OPS) and op not in self.fused:
            self.schedule.barrier()
            self._vector(op)
        elif not isinstance(op, ConstantOp | RequantizeOp) and op.name != "func.return":
            where = op.where if isinstance(op, QnnOp) else op.name
            raise DopantError(f"convert-qnn-to-accel cannot lower {where}.")

    def _io(self, role: str, name: str, address: int, op: QuantizeOp | DequantizeOp) -> None:
        value = op.output if isinstance(op, QuantizeOp) else op.input
        if isinstance(op, QuantizeOp) and not isinstance(op.input, BlockArgument):
            raise DopantError(f"{op.where}: only the network input is quantized (by the host).")
        if op.params.is_per_channel or any(op.params.zero_points):
            raise DopantError(f"{op.where}: network {role}s need per-tensor parameters, zp 0.")
        self.tensors.append(TensorOp.make(role, name, address, shape(value), op.params))

    def _layer(self, op: Conv2DOp | LinearOp) -> None:
        rq = fused_requantize(op)
        self.fused.add(rq)
        conv = ConvShape.of(op)
        factors = layer_requant(rq, conv.n)
        weight = op.weight.owner
        bias = op.bias.owner if conv.has_bias and op.bias is not None else None
        if not isinstance(weight, ConstantOp) or not isinstance(bias, ConstantOp | None):
            raise DopantError(f"{op.where}: weights and bias must be qnn.constant ops.")
        table = np.concatenate([factors.m0, factors.shift])
        dram = ConvDram(
            x=self.dram.address(op.input),
            weight=self._constant(weight, f"{conv.path}.weight"),
            bias=-1 if bias is None else self._constant(bias, f"{conv.path}.bias"),
            table=self.dram.words(table, f"{conv.path}/multipliers"),
            out=self.dram.value(rq.output),
        )
        self._value(rq, dram.out)
        self.layers.append(layer_op(conv, self.config))
        lower_conv(self.schedule, conv, conv_plan(op), self.config, dram, factors.fields)

    def _value(self, op: QnnOp, address: int) -> None:
        """Record where `op`'s value lives, for debuggers: no region is reused, so every value
        is still in DRAM when the program ends."""
        params = output_params(op.results[0])
        if params is None or params.is_per_channel:
            return
        value = op.results[0]
        self.tensors.append(TensorOp.make("value", self.names[op], address, shape(value), params))

    def _constant(self, op: ConstantOp, default_path: str) -> int:
        path = op.path.data if op.path is not None else default_path
        return self.dram.constant(op.result, op.numpy(), path)

    def _vector(self, op: QnnOp) -> None:
        plan, shapes = vector_plan(op), vector_shapes(op)
        result = op.results[0]
        target = Plane(self.dram.value(result), plane(result, op.where), Elem.of(result))
        self._value(op, target.dram)
        if not isinstance(op, ConcatOp):
            sources = [self._plane(value, op) for value in op.operands]
            params = self._params(op)
            lower_vector(self.schedule, self.config, shapes[0], plan, sources, target, params)
            return
        offset = [0, 0, 0]
        axis = op.axis.value.data - 1  # batch 1: NCHW axes 1..3 are plane axes 0..2
        for value, copy in zip(op.inputs, shapes, strict=True):
            part = target.shifted(*offset)
            lower_vector(self.schedule, self.config, copy, plan, [self._plane(value, op)], part)
            offset[axis] += plane(value, op.where)[axis]

    def _plane(self, value: SSAValue, op: QnnOp) -> Plane:
        return Plane(self.dram.address(value), plane(value, op.where), Elem.of(value))

    def _params(self, op: QnnOp) -> tuple[int, tuple[int, int, int]] | None:
        """The vector op's parameter words in DRAM and its (lo, hi, rounding)."""
        path = f"{op.path.data}/multipliers"
        if isinstance(op, AddOp):
            assert op.params is not None and op.rounding is not None, "integer adds verify so"
            lhs, rhs, out = op.params
            a = requant(op.where, lhs, out, op.act, op.rounding.data)
            b = requant(op.where, rhs, out, op.act, op.rounding.data)
            words = np.array([a.m0[0], b.m0[0], a.shift[0], b.shift[0]])
            return self.dram.words(words, path), a.fields
        if isinstance(op, RequantizeOp):
            r = requant(op.where, op.in_params, op.out_params, op.act, op.rounding.data)
            return self.dram.words(np.array([r.m0[0], r.shift[0]]), path), r.fields
        if isinstance(op, ReluOp):
            # max(q, 0) is a rescale by exactly 1.0 clamped below at 0.
            elem = Elem.of(op.output)
            lo, hi = storage_range(elem.bits, elem.signed)
            identity = np.array(intops.quantize_multiplier(1.0))
            return self.dram.words(identity, path), (max(0, lo), hi, 0)
        return None

    def instructions(self) -> list[tuple[Instruction, str]]:
        """The instructions in program order, tokens set, each with its layer's module path."""
        listed = []
        for item in self.schedule.finish():
            try:
                listed.append((Instruction.make(item.op, **item.fields), item.path))
            except IsaError as error:
                raise DopantError(
                    f'convert-qnn-to-accel: layer "{item.path}" needs an instruction the ISA '
                    f"cannot encode: {error}; re-run tile for this target."
                ) from None
        return listed

    def module_ops(self) -> list[Operation]:
        """The new module body: I/O tensors, segments, layers, then the instructions in order."""
        roles = {t.role.data for t in self.tensors}
        if not {"input", "output"} <= roles:
            raise DopantError("the network has no input or no output on the accelerator.")
        by_role = sorted(self.tensors, key=lambda t: TENSOR_ROLES.index(t.role.data))
        ops: list[Operation] = [*by_role, *self.dram.segments, *self.layers]
        ops += [INSTRUCTION_OPS[i.op].of_instruction(i, path) for i, path in self.instructions()]
        return ops
