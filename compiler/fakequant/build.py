"""Reading the integer IR of the quantize pass into the nodes and parameters of a
`FakeQuantNetwork` (`dopant.compiler.fakequant`).

Every integer activation gets the learned step of the op that produced it (quantize, requantize,
add); ops that only move integers keep their input's step, and a concat ties the steps of all
its inputs into one, as the integer IR requires them to share parameters. Parameters the IR
states again (requantize inputs, add operands, dequantize) must equal the producer's, since the
model derives them from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn
from xdsl.dialects.builtin import Float32Type, ModuleOp, TensorType
from xdsl.dialects.func import ReturnOp
from xdsl.ir import Operation, SSAValue

from dopant.compiler.fakequant.nodes import (
    AddNode,
    ConcatNode,
    DequantizeNode,
    FakeQuantLayer,
    LayerNode,
    MapNode,
    Node,
    QuantizeNode,
    RequantizeNode,
    Rescale,
)
from dopant.compiler.fakequant.shapes import conv_fn, move_fn
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
    QuantParamsAttr,
    ReluOp,
    RequantizeOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import forward, is_float, shape
from dopant.dialects.qnn.layers import ssa_name
from dopant.support.errors import InputError

KNOWN = (
    QuantizeOp,
    Conv2DOp,
    LinearOp,
    RequantizeOp,
    AddOp,
    MaxPool2DOp,
    AvgPool2DOp,
    GlobalAvgPoolOp,
    ReshapeOp,
    ReluOp,
    ConcatOp,
    DequantizeOp,
)
# Names a torch ModuleDict or ParameterDict key may not take.
_RESERVED = frozenset(dir(nn.ModuleDict)) | frozenset(dir(nn.ParameterDict))


@dataclass
class ActivationStep:
    """A learned activation step: its initial value, the features per sample it quantizes
    (LSQ's N) and Q_P, the largest integer of its storage type."""

    init: float
    numel: int
    qmax: int


@dataclass
class Program:
    """What a FakeQuantNetwork runs and learns, read from one `@forward`."""

    input_shape: tuple[int, ...]
    nodes: list[Node] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)  # the op each node runs, by position
    ids: dict[SSAValue, int] = field(default_factory=dict)  # value a node writes -> its id
    steps: dict[str, ActivationStep] = field(default_factory=dict)  # one per tied group
    alias: dict[str, str] = field(default_factory=dict)  # step key -> key of its group
    layers: dict[str, FakeQuantLayer] = field(default_factory=dict)
    step_of: dict[SSAValue, str] = field(default_factory=dict)  # activation -> step key
    layer_of: dict[Conv2DOp | LinearOp, str] = field(default_factory=dict)  # layer -> key


def _where(op: Operation) -> str:
    return op.where if isinstance(op, QnnOp) else op.name


def _per_sample(value: SSAValue) -> int:
    return math.prod(shape(value)[1:])


def _same_scales(declared: list[float], expected: np.ndarray) -> bool:
    return len(declared) == expected.size and np.allclose(declared, expected, rtol=1e-9, atol=0)


def build(module: ModuleOp) -> Program:
    """The program of `module`'s `@forward`: quantized IR as the quantize pass writes it.

    Raises InputError naming the op (and its path) for a float op, an op the model does not
    simulate, nonzero zero points, per-channel activation parameters, weights that are not
    constants of their own, or parameters that disagree with the value they describe.
    """
    fn = forward(module, "to build a fake-quant network from")
    args = fn.body.block.args
    if len(args) != 1 or not isinstance(args[0].type, TensorType):
        raise InputError("the fake-quant network takes a @forward with exactly one input tensor.")
    if not isinstance(args[0].type.element_type, Float32Type):
        raise InputError(f"the @forward input is {args[0].type}; an f32 tensor was expected.")
    builder = _Builder(Program(shape(args[0].type)), args[0])
    for op in fn.body.block.ops:
        before = len(builder.program.nodes)
        builder.add(op)
        if len(builder.program.nodes) > before:
            # The last node, appended at the return, runs the dequantize it returns.
            source = op.operands[0].owner if isinstance(op, ReturnOp) else op
            assert isinstance(source, Operation)
            builder.program.ops.append(source)
    program = builder.program
    if not program.nodes or not isinstance(program.nodes[-1], DequantizeNode):
        raise InputError("@forward returns no qnn.dequantize result; is the module quantized?")
    program.alias = {key: builder.root(key) for key in program.alias}
    return program


class _Builder:
    """Appends one node per op; `params` holds the declared parameters of each activation."""

    def __init__(self, program: Program, arg: SSAValue) -> None:
        self.program = program
        self.arg = arg
        self.ids = program.ids
        self.params: dict[SSAValue, QuantParamsAttr] = {}
        self.accumulators: dict[SSAValue, np.ndarray] = {}  # si32 value -> S_x * S_w
        self.dequantized: dict[SSAValue, int] = {}  # f32 result -> id of its integer value

    def add(self, op: Operation) -> None:
        if isinstance(op, ConstantOp):
            return  # read by the layer that uses it
        if isinstance(op, ReturnOp):
            self._return(op)
            return
        if isinstance(op, QnnOp) and not isinstance(op, DequantizeOp) and is_float(op.results[0]):
            raise InputError(
                f"{op.where} computes in f32; the fake-quant network takes the integer IR of "
                "the quantize pass (run `quantize` first)."
            )
        if not isinstance(op, KNOWN):
            names = ", ".join(kind.name for kind in KNOWN)
            raise InputError(
                f"{_where(op)} is not an op the fake-quant network simulates; it knows {names}."
            )
        if isinstance(op, QuantizeOp):
            self._quantize(op)
        elif isinstance(op, Conv2DOp | LinearOp):
            self._layer(op)
        elif isinstance(op, RequantizeOp):
            self._requantize(op)
        elif isinstance(op, AddOp):
            self._add(op)
        elif isinstance(op, ConcatOp):
            self._concat(op)
        elif isinstance(op, DequantizeOp):
            self._dequantize(op)
        else:
            self._map(op)

    # Values, keys and steps.

    def _id(self, value: SSAValue) -> int:
        self.ids[value] = len(self.ids)
        return self.ids[value]

    def _input(self, op: QnnOp, value: SSAValue) -> tuple[int, QuantParamsAttr]:
        """The id and parameters of an integer activation `op` reads."""
        if value not in self.params:
            raise InputError(
                f"{op.where} reads a value that is not an integer activation (the float input, "
                "an si32 accumulator or a constant); the fake-quant network cannot model it."
            )
        return self.ids[value], self.params[value]

    def _key(self, path: str) -> str:
        key = ssa_name(path)
        while key in self.program.alias or key in self.program.layers or key in _RESERVED:
            key += "_"
        return key

    def root(self, key: str) -> str:
        while self.program.alias[key] != key:
            key = self.program.alias[key]
        return key

    def _check_params(self, op: QnnOp, params: QuantParamsAttr) -> None:
        if any(params.zero_points):
            raise InputError(f"{op.where} has nonzero zero points; only zero point 0 is modeled.")

    def _step(self, op: QnnOp, params: QuantParamsAttr, value: SSAValue) -> str:
        """A new learned step for `value`, produced by `op` with `params`."""
        self._check_params(op, params)
        if params.is_per_channel:
            raise InputError(f"{op.where} produces per-channel parameters; steps are per tensor.")
        key = self._key(op.path.data)
        self.program.alias[key] = key
        self.program.steps[key] = ActivationStep(params.scales[0], _per_sample(value), params.qmax)
        self.params[value] = params
        self.program.step_of[value] = key
        return key

    def _same(self, op: QnnOp, what: str, declared: QuantParamsAttr, value: SSAValue) -> None:
        """`declared` must be the parameters of activation `value`."""
        actual = self.params[value]
        if declared.element_type != actual.element_type or not _same_scales(
            declared.scales, np.asarray(actual.scales)
        ):
            raise InputError(
                f"{op.where} states {what} parameters {declared} but the value has {actual}; "
                "the fake-quant network derives them from the value."
            )

    def _keep(self, value: SSAValue, source: SSAValue) -> None:
        """`value` has the parameters and step of `source`."""
        self.params[value] = self.params[source]
        self.program.step_of[value] = self.program.step_of[source]

    # One method per kind of op.

    def _quantize(self, op: QuantizeOp) -> None:
        if op.input is not self.arg:
            raise InputError(f"{op.where} quantizes something other than the @forward input.")
        key = self._step(op, op.params, op.output)
        p = op.params
        self.program.nodes.append(QuantizeNode(self._id(op.output), key, p.qmin, p.qmax))

    def _constant(self, op: QnnOp, value: SSAValue | None, what: str) -> ConstantOp | None:
        if value is None:
            return None
        owner = value.owner
        if not isinstance(owner, ConstantOp) or owner.params is None or not value.has_one_use():
            raise InputError(
                f"{op.where}: the {what} must be a quantized qnn.constant used by this layer only."
            )
        self._check_params(op, owner.params)
        return owner

    def _layer(self, op: Conv2DOp | LinearOp) -> None:
        x, x_params = self._input(op, op.input)
        weight = self._constant(op, op.weight, "weight")
        bias = self._constant(op, op.bias, "bias")
        assert weight is not None and weight.params is not None
        w_params, q_weight = weight.params, weight.numpy().astype(np.int64)
        bits = w_params.bits.data
        if not w_params.is_signed or np.abs(q_weight).max(initial=0) >= 1 << (bits - 1):
            raise InputError(
                f"{op.where}: the weights must be signed and symmetric, within "
                f"+-{(1 << (bits - 1)) - 1} at {bits} bits, as the quantize pass writes them."
            )
        if w_params.is_per_channel and w_params.axis.data != 0:
            raise InputError(f"{op.where}: per-channel weights must use axis 0 (output channels).")
        scales = np.asarray(w_params.scales, np.float64)
        acc_scales = x_params.scales[0] * np.broadcast_to(scales, (shape(op.weight)[0],))
        key = self._key(op.path.data)
        q_bias = None if bias is None else bias.numpy().astype(np.int64)
        self.program.layers[key] = FakeQuantLayer(q_weight, scales, bits, q_bias, acc_scales)
        self.program.layer_of[op] = key
        self.accumulators[op.output] = acc_scales
        conv = conv_fn(op) if isinstance(op, Conv2DOp) else None
        self.program.nodes.append(LayerNode(x, self._id(op.output), key, op.where, conv))

    def _requantize(self, op: RequantizeOp) -> None:
        p_in, p_out = op.in_params, op.out_params
        self._check_params(op, p_in)
        if op.input in self.accumulators:
            expected = self.accumulators[op.input]
            if not (p_in.is_per_channel and p_in.axis.data == 1) or not _same_scales(
                p_in.scales, expected
            ):
                raise InputError(
                    f"{op.where}: the accumulator's parameters must be S_x * S_w per channel "
                    "along axis 1, as the quantize pass writes them."
                )
            x = self.ids[op.input]
        else:
            x, _ = self._input(op, op.input)
            self._same(op, "input", p_in, op.input)
        key = self._step(op, p_out, op.output)
        act = op.act.bounds if op.act is not None else None
        out = Rescale(self._id(op.output), key, act, p_out.qmin, p_out.qmax, op.rounding.data)
        node = RequantizeNode(x, out)
        self.program.nodes.append(node)

    def _add(self, op: AddOp) -> None:
        lhs, _ = self._input(op, op.lhs)
        rhs, _ = self._input(op, op.rhs)
        params = op.params
        assert params is not None and op.rounding is not None, "integer adds verify with both"
        self._same(op, "lhs", params[0], op.lhs)
        self._same(op, "rhs", params[1], op.rhs)
        p_out = params[2]
        key = self._step(op, p_out, op.output)
        act = op.act.bounds if op.act is not None else None
        out = Rescale(self._id(op.output), key, act, p_out.qmin, p_out.qmax, op.rounding.data)
        node = AddNode(lhs, rhs, out)
        self.program.nodes.append(node)

    def _concat(self, op: ConcatOp) -> None:
        ids = [self._input(op, v)[0] for v in op.inputs]
        first = op.inputs[0]
        group = self.root(self.program.step_of[first])
        for value in op.inputs[1:]:
            self._same(op, "shared input", self.params[first], value)
            other = self.root(self.program.step_of[value])
            if other != group:
                # One step for all inputs; LSQ's N counts the features of every member.
                self.program.steps[group].numel += self.program.steps.pop(other).numel
                self.program.alias[other] = group
        self._keep(op.output, first)
        self.program.nodes.append(ConcatNode(tuple(ids), self._id(op.output), op.axis.value.data))

    def _dequantize(self, op: DequantizeOp) -> None:
        x, _ = self._input(op, op.input)
        self._same(op, "input", op.params, op.input)
        self.dequantized[op.output] = x

    def _map(self, op: QnnOp) -> None:
        (source,) = op.operands
        (value,) = op.results
        x, params = self._input(op, source)
        self._keep(value, source)
        self.program.nodes.append(MapNode(x, self._id(value), move_fn(op, params)))

    def _return(self, op: ReturnOp) -> None:
        if len(op.operands) != 1 or op.operands[0] not in self.dequantized:
            raise InputError(
                "@forward must return exactly one value, the result of a qnn.dequantize."
            )
        self.program.nodes.append(DequantizeNode(self.dequantized[op.operands[0]]))
