"""The `accel` dialect: one op per accelerator instruction, generated from the ISA table.

    accel.conv wait=0x1 signal=0x4 inp=0 c_in=16 ih=30 iw=30 ... a_bits=8 at "layer1.0.conv1"

Each instruction op keeps every field of `dialects.isa` (zero fields omitted in text, token masks
in hex) and the torch module path of the layer it belongs to. Around the instructions, a module
holds `accel.input` / `accel.output` (network I/O in DRAM with its quantization) and
`accel.segment` (constant data placed in DRAM), `accel.layer` (a conv or linear layer's
untiled GEMM, for statistics), and the attributes `accel.config` (the
machine, as JSON) and `accel.dram_bytes`. `backend.emit` turns such a module into a binary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from xdsl.dialects.builtin import (
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    i64,
)
from xdsl.ir import Dialect
from xdsl.irdl import IRDLOperation, irdl_op_definition, prop_def
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from dopant.dialects.isa import ISA, Instruction, InstructionDef, IsaError
from dopant.dialects.qnn.attrs import QuantParamsAttr
from dopant.dialects.qnn.base import i64_array, ints
from dopant.dialects.qnn.layers import dense, numpy_dtype

_MASKS = ("wait", "signal")


class InstructionOp(IRDLOperation):
    """Base of the instruction ops: all fields but the opcode in table order, and a path."""

    DEFINITION: ClassVar[InstructionDef]
    values = prop_def(DenseArrayBase.constr(i64))
    path = prop_def(StringAttr)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in cls.DEFINITION.all_fields[1:]]

    @classmethod
    def of(cls, path: str, **fields: int) -> InstructionOp:
        """The op for an instruction with these fields (others 0), checked against the ISA."""
        return cls.of_instruction(Instruction.make(cls.DEFINITION.mnemonic, **fields), path)

    @classmethod
    def of_instruction(cls, instruction: Instruction, path: str) -> InstructionOp:
        """The op for a checked `instruction` of this op's kind, named by its layer's path."""
        values = [instruction[name] for name in cls.field_names()]
        return cls.build(properties={"values": i64_array(values), "path": StringAttr(path)})

    def fields(self) -> dict[str, int]:
        return dict(zip(self.field_names(), ints(self.values), strict=True))

    def instruction(self) -> Instruction:
        return Instruction.make(self.DEFINITION.mnemonic, **self.fields())

    def verify_(self) -> None:
        if len(ints(self.values)) != len(self.field_names()):
            raise VerifyException(
                f'{self.name} at "{self.path.data}" has {len(ints(self.values))} field values '
                f"but the instruction has {len(self.field_names())} fields."
            )
        try:
            self.instruction()
        except IsaError as error:
            raise VerifyException(f'{self.name} at "{self.path.data}": {error}.') from None

    def print(self, printer: Printer) -> None:
        for name, value in self.fields().items():
            if value:
                printer.print_string(f" {name}={hex(value) if name in _MASKS else value}")
        printer.print_string(f' at "{self.path.data}"')

    @classmethod
    def parse(cls, parser: Parser) -> InstructionOp:
        fields: dict[str, int] = {}
        while (name := parser.parse_optional_identifier()) is not None:
            if name == "at":
                break
            parser.parse_punctuation("=")
            fields[name] = parser.parse_integer()
        else:
            parser.parse_keyword("at")
        path = parser.parse_str_literal()
        try:
            return cls.of(path, **fields)
        except IsaError as error:
            parser.raise_error(str(error))


def _instruction_op(definition: InstructionDef) -> type[InstructionOp]:
    cls = type(
        f"{definition.mnemonic.title().replace('_', '')}Op",
        (InstructionOp,),
        {
            "name": f"accel.{definition.mnemonic}",
            "DEFINITION": definition,
            "__doc__": definition.doc,
            "__module__": __name__,
            "__annotations__": {"DEFINITION": ClassVar[InstructionDef]},
        },
    )
    return irdl_op_definition(cls)


INSTRUCTION_OPS: dict[str, type[InstructionOp]] = {d.mnemonic: _instruction_op(d) for d in ISA}


TENSOR_ROLES = ("input", "output", "value")


@irdl_op_definition
class TensorOp(IRDLOperation):
    """A tensor in DRAM: its name, byte address, shape and quantization.

    role `input` / `output`: a network input (the host quantizes it) or output (the host
    dequantizes it). role `value`: an intermediate activation, named as the reference's
    `trace` names it, which a debugger reads back after the run (`dopant compare`).
    """

    name = "accel.tensor"
    tensor_name = prop_def(StringAttr)
    role = prop_def(StringAttr)
    dram = prop_def(IntegerAttr.constr(type=i64))
    shape = prop_def(DenseArrayBase.constr(i64))
    params = prop_def(QuantParamsAttr)
    assembly_format = "$role $tensor_name `dram` $dram `shape` $shape $params attr-dict"

    @staticmethod
    def make(
        role: str, name: str, dram: int, shape: Sequence[int], params: QuantParamsAttr
    ) -> TensorOp:
        return TensorOp.build(
            properties={
                "role": StringAttr(role),
                "tensor_name": StringAttr(name),
                "dram": IntegerAttr(dram, i64),
                "shape": i64_array(shape),
                "params": params,
            }
        )

    def verify_(self) -> None:
        if self.role.data not in TENSOR_ROLES:
            raise VerifyException(
                f"accel.tensor role must be one of {', '.join(TENSOR_ROLES)}, got "
                f"'{self.role.data}'."
            )
        if self.params.is_per_channel:
            raise VerifyException(
                f"accel.tensor '{self.tensor_name.data}' needs per-tensor parameters."
            )


@irdl_op_definition
class SegmentOp(IRDLOperation):
    """Constant data (weights, biases, multipliers) placed in DRAM at byte address `dram`."""

    name = "accel.segment"
    dram = prop_def(IntegerAttr.constr(type=i64))
    value = prop_def(DenseIntOrFPElementsAttr)
    path = prop_def(StringAttr)
    assembly_format = "`dram` $dram $value `at` $path attr-dict"

    @staticmethod
    def make(dram: int, values: np.ndarray, element: IntegerType, path: str) -> SegmentOp:
        return SegmentOp.build(
            properties={
                "dram": IntegerAttr(dram, i64),
                "value": dense(values.ravel(), element),
                "path": StringAttr(path),
            }
        )

    def element(self) -> IntegerType:
        elem = self.value.get_element_type()
        assert isinstance(elem, IntegerType), "verified"
        return elem

    def numpy(self) -> np.ndarray:
        data = self.value.data.data
        return np.frombuffer(data, numpy_dtype(self.element())).astype(np.int64)

    def verify_(self) -> None:
        if not isinstance(self.value.get_element_type(), IntegerType):
            raise VerifyException(f'accel.segment at "{self.path.data}" must hold integers.')


_GEMM_FIELDS = ("m", "k", "n", "groups", "w_bits", "a_bits")


@irdl_op_definition
class LayerOp(IRDLOperation):
    """The untiled GEMM of one conv or linear layer, recorded for statistics; it runs nothing.

    `groups` GEMMs run one after another, each (m x k) by (k x n): m output pixels,
    k = (c_in / groups) * kh * kw, n = c_out / groups; `w_bits` and `a_bits` are the operand
    widths the array fuses to (as its conv instructions say). `backend.emit` writes it into
    the binary's debug map, where statistics compute the layer's standard fold model
    (`backend.costs.fold_model_cycles`) for the layer at module path `path`.
    """

    name = "accel.layer"
    path = prop_def(StringAttr)
    m = prop_def(IntegerAttr.constr(type=i64))
    k = prop_def(IntegerAttr.constr(type=i64))
    n = prop_def(IntegerAttr.constr(type=i64))
    groups = prop_def(IntegerAttr.constr(type=i64))
    w_bits = prop_def(IntegerAttr.constr(type=i64))
    a_bits = prop_def(IntegerAttr.constr(type=i64))
    assembly_format = (
        "$path `m` $m `k` $k `n` $n `groups` $groups `w_bits` $w_bits `a_bits` $a_bits attr-dict"
    )

    @staticmethod
    def make(
        path: str, *, m: int, k: int, n: int, groups: int, w_bits: int, a_bits: int
    ) -> LayerOp:
        values = (m, k, n, groups, w_bits, a_bits)
        sizes = {name: IntegerAttr(v, i64) for name, v in zip(_GEMM_FIELDS, values, strict=True)}
        return LayerOp.build(properties={"path": StringAttr(path), **sizes})

    def gemm(self) -> dict[str, int]:
        """m, k, n, groups, w_bits and a_bits by name."""
        values = (self.m, self.k, self.n, self.groups, self.w_bits, self.a_bits)
        return {name: attr.value.data for name, attr in zip(_GEMM_FIELDS, values, strict=True)}

    def verify_(self) -> None:
        where = f'accel.layer at "{self.path.data}"'
        if not self.path.data:
            raise VerifyException("accel.layer needs the module path of its layer, not ''.")
        # Whether the machine fuses to w_bits and a_bits is the loader's check, as for conv.
        for name, value in self.gemm().items():
            if value < 1:
                raise VerifyException(f"{where} has {name}={value}; it must be at least 1.")


ACCEL = Dialect("accel", [*INSTRUCTION_OPS.values(), TensorOp, SegmentOp, LayerOp], [])
