"""`fuse-activation`: fuse a ReLU or clamp into the conv, linear or add that produces its input."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from dopant.dialects.qnn import ActivationAttr, AddOp, ClampOp, Conv2DOp, LinearOp, ReluOp
from dopant.passes._rewrite import apply_patterns, rebuild


class FuseIntoProducer(RewritePattern):
    """relu(conv(...)) -> conv(...) act <relu>; clamp(...) -> act <clamp lo, hi>."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, activation: ReluOp | ClampOp, rewriter: PatternRewriter) -> None:
        producer = activation.input.owner
        if not isinstance(producer, Conv2DOp | LinearOp | AddOp) or producer.act is not None:
            return
        if not producer.output.has_one_use():
            return
        act = (
            ActivationAttr.relu()
            if isinstance(activation, ReluOp)
            else ActivationAttr.clamp(*activation.bounds)
        )
        fused = rebuild(producer, producer.operands, rewriter, act=act)
        rewriter.replace(activation, [], [fused.results[0]])


@dataclass(frozen=True)
class FuseActivationPass(ModulePass):
    """Fuse each `qnn.relu` and `qnn.clamp` (ReLU6, hardtanh) into the op that feeds it.

    Expects: `qnn` IR (float or integer).
    Guarantees: an activation whose input comes from a conv2d, linear or add with no other user
    and no fused activation yet is removed and recorded as that op's `act`, which applies the
    same clamp to its result; quantization then folds it into the output range. Other
    activations stay as they are.
    Fails: never; a fusion that does not apply leaves the IR unchanged.
    """

    name = "fuse-activation"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        apply_patterns(op, [FuseIntoProducer()])
