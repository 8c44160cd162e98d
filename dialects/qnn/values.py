"""Naming and reading the values of integer `qnn` IR, shared by the reference's trace, the
lowering's debug map and the numerics tools, so all three agree on what a value is called."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from xdsl.ir import Operation, SSAValue

from dopant.dialects.qnn.attrs import QuantParamsAttr
from dopant.dialects.qnn.base import QnnOp
from dopant.dialects.qnn.quant import QuantizeOp, RequantizeOp
from dopant.dialects.qnn.tensor_ops import AddOp

REQUANTIZE_SUFFIX = "/requantize"


def requantized_path(layer: str) -> str:
    """The path `quantize` gives the requantize of a conv's or linear's accumulator: that
    requantize's value is the integer counterpart of the float layer's output."""
    return f"{layer}{REQUANTIZE_SUFFIX}"


def float_name(name: str) -> str:
    """The float network's name for an integer value: `P/requantize` (a conv's or linear's
    requantized output) is the float output of `P`; every other op keeps its name."""
    base, hash_sign, count = name.partition("#")
    return f"{base.removesuffix(REQUANTIZE_SUFFIX)}{hash_sign}{count}"


def value_names(ops: Iterable[Operation]) -> dict[Operation, str]:
    """The name of each `qnn` op's value, in program order: its module path, with `#1`, `#2`,
    ... from the path's second use (`relu`, `relu#1`). Constants are not `QnnOp`s: unnamed."""
    seen: Counter[str] = Counter()
    names: dict[Operation, str] = {}
    for op in ops:
        if not isinstance(op, QnnOp):
            continue
        path = op.path.data
        names[op] = f"{path}#{seen[path]}" if seen[path] else path
        seen[path] += 1
    return names


def output_params(value: SSAValue) -> QuantParamsAttr | None:
    """The parameters of an integer activation: those of the op that made it, looking through
    ops that only move values (pools, reshape, relu, concat keep their input's parameters)."""
    op = value.owner
    while True:
        if isinstance(op, QuantizeOp):
            return op.params
        if isinstance(op, RequantizeOp):
            return op.out_params
        if isinstance(op, AddOp):
            return op.out_params
        if not isinstance(op, QnnOp) or not op.operands:
            return None
        op = op.operands[0].owner
