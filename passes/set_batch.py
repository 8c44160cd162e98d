"""`set-batch`: give a network a new batch size (the leading axis of every activation)."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import FunctionType, ModuleOp, TensorType
from xdsl.dialects.func import FuncOp
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from dopant.dialects.qnn import QnnOp
from dopant.support.errors import DopantError


def _rebatched(value: SSAValue, old: int, new: int, where: str) -> TensorType:
    ty = value.type
    assert isinstance(ty, TensorType)
    dims = list(ty.get_shape())
    if not dims or dims[0] != old:
        raise DopantError(
            f"{where} has shape {dims}, whose leading axis is not the batch {old}; set-batch "
            "needs every activation to keep the batch as its first axis."
        )
    return TensorType(ty.element_type, [new, *dims[1:]])


@dataclass(frozen=True)
class SetBatchPass(ModulePass):
    """Rewrite `@forward` to take and return batches of `size` instead of the traced batch.

    Expects: activations whose first axis is the batch (true of everything the frontend
    imports); constants are left alone.
    Guarantees: every function argument, activation and result has leading axis `size`; the
    IR computes the same per-sample function.
    Fails: if `size` is not positive, or an activation's leading axis differs from the traced
    batch (a reshape that folds the batch away), naming the op.
    """

    name = "set-batch"
    size: int = 1

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.size < 1:
            raise DopantError(f"set-batch needs a positive size, got {self.size}.")
        for fn in op.walk():
            if isinstance(fn, FuncOp):
                self._rebatch(fn)

    def _rebatch(self, fn: FuncOp) -> None:
        args = fn.body.block.args
        if not args:
            return
        first = args[0].type
        assert isinstance(first, TensorType)
        batch = first.get_shape()[0]
        for arg in list(args):
            Rewriter.replace_value_with_new_type(
                arg, _rebatched(arg, batch, self.size, f"argument %{arg.name_hint or arg.index}")
            )
        for inner in fn.body.walk():
            if not isinstance(inner, QnnOp):  # constants are not QnnOps: they keep their shape
                continue
            for result in list(inner.results):
                new_type = _rebatched(result, batch, self.size, inner.where)
                Rewriter.replace_value_with_new_type(result, new_type)
        outputs = [v.type for v in fn.get_return_op().operands]  # type: ignore[union-attr]
        inputs = [a.type for a in fn.body.block.args]
        fn.function_type = FunctionType.from_lists(inputs, outputs)
