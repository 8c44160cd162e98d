"""Helpers the passes share: reading constants and rebuilding a layer with new operands."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.irdl import IRDLOperation
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
)
from xdsl.rewriter import InsertPoint

from dopant.dialects.qnn import ConstantOp


def constant_array(value: SSAValue | None) -> np.ndarray | None:
    """The numpy value behind `value` if a `qnn.constant` defines it, else None."""
    if value is None or not isinstance(value.owner, ConstantOp):
        return None
    return value.owner.numpy()


def rebuild(
    op: IRDLOperation,
    operands: Sequence[SSAValue | None],
    rewriter: PatternRewriter,
    **changed_properties: Attribute | None,
) -> IRDLOperation:
    """Replace `op` by an op of the same kind with new operands (and some properties changed)."""
    properties = {**op.properties, **changed_properties}
    new = type(op).build(
        operands=list(operands),
        result_types=[r.type for r in op.results],
        properties=properties,
        attributes=dict(op.attributes),
    )  # type: ignore[arg-type]
    rewriter.replace(op, new)
    return new


def insert_constant(
    rewriter: PatternRewriter, before: Operation, array: np.ndarray, path: str | None
) -> SSAValue:
    return rewriter.insert(ConstantOp.of(array, path), InsertPoint.before(before)).result


def apply_patterns(module: ModuleOp, patterns: Sequence[RewritePattern]) -> None:
    """Apply `patterns` greedily until nothing changes; dead pure ops are erased."""
    PatternRewriteWalker(GreedyRewritePatternApplier(list(patterns))).rewrite_module(module)
