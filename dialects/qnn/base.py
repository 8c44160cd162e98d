"""Shared pieces of the `qnn` ops: the module-path property, type helpers and shape rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from xdsl.dialects.builtin import (
    BytesAttr,
    DenseArrayBase,
    Float32Type,
    IntegerType,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.dialects.func import FuncOp
from xdsl.ir import Attribute, SSAValue
from xdsl.irdl import IRDLOperation, prop_def
from xdsl.utils.exceptions import VerifyException

from dopant.support.errors import InputError


class QnnOp(IRDLOperation):
    """Base of every `qnn` op that computes: it keeps the torch module path it came from."""

    path = prop_def(StringAttr)

    @property
    def where(self) -> str:
        """The op and its module path, for messages: `qnn.conv2d at "layer1.0.conv1"`."""
        return f'{self.name} at "{self.path.data}"'

    def fail(self, message: str) -> VerifyException:
        return VerifyException(f"{self.where}: {message}")


def i64_array(values: Sequence[int]) -> DenseArrayBase:
    # Packed by numpy: DenseArrayBase.from_list checks each element in Python, which was most
    # of the time spent building accel ops (one array of fields per instruction).
    return DenseArrayBase(i64, BytesAttr(np.asarray(values, dtype="<i8").tobytes()))


def ints(array: DenseArrayBase) -> tuple[int, ...]:
    """The values of an i64 array property."""
    return tuple(int(v) for v in cast(DenseArrayBase[IntegerType], array).iter_values())


def tensor_type(value: SSAValue) -> TensorType:
    ty = value.type
    assert isinstance(ty, TensorType), "operand constraints guarantee tensor types"
    return ty


def shape(value: SSAValue | Attribute) -> tuple[int, ...]:
    ty = value.type if isinstance(value, SSAValue) else value
    assert isinstance(ty, TensorType)
    return tuple(ty.get_shape())


def element(value: SSAValue) -> Attribute:
    return tensor_type(value).element_type


def is_float(value: SSAValue) -> bool:
    return isinstance(element(value), Float32Type)


def is_int(value: SSAValue) -> bool:
    return isinstance(element(value), IntegerType)


def with_shape(
    like: SSAValue, new_shape: Sequence[int], elem: Attribute | None = None
) -> TensorType:
    """A tensor type of `new_shape` with the element type of `like` (or `elem`)."""
    return TensorType(elem or element(like), list(new_shape))


def check_len(op: QnnOp, field: str, values: tuple[int, ...], n: int, minimum: int) -> None:
    if len(values) != n:
        raise op.fail(f"{field} needs {n} values, got {len(values)}: {list(values)}.")
    if any(v < minimum for v in values):
        raise op.fail(f"{field} values must be at least {minimum}, got {list(values)}.")


def check_result_shape(op: QnnOp, expected: Sequence[int], result: SSAValue) -> None:
    got = shape(result)
    if got != tuple(expected):
        raise op.fail(f"the result shape should be {list(expected)} but is {list(got)}.")


def check_same_element(op: QnnOp, a: SSAValue, b: SSAValue, what: str) -> None:
    if element(a) != element(b):
        raise op.fail(f"{what} has element type {element(b)} but the input has {element(a)}.")


def forward(module: ModuleOp, purpose: str) -> FuncOp:
    """The network's function, `func.func @forward` (what `dopant import` makes); InputError
    saying what it was needed `purpose` for (e.g. "to quantize") when the module has none."""
    for op in module.walk():
        if isinstance(op, FuncOp) and op.sym_name.data == "forward":
            return op
    raise InputError(
        f"the module has no @forward function {purpose}; a network's IR holds its layers in "
        "func.func @forward (as `dopant import` writes it)."
    )
