"""`fold-batchnorm`: fold inference batch norms into the conv or linear layer before them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from dopant.dialects.qnn import BatchNormOp, Conv2DOp, LinearOp
from dopant.passes._rewrite import apply_patterns, constant_array, insert_constant, rebuild
from dopant.support.errors import DopantError


def fold(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """W' = W * a and b' = (b - mean) * a + beta per output channel, a = gamma / sqrt(var + eps).

    Computed in float64 so the folded f32 layer matches layer-then-norm to f32 rounding.
    """
    a = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    b = np.zeros_like(a) if bias is None else bias.astype(np.float64)
    scale = a.reshape((-1,) + (1,) * (weight.ndim - 1))
    folded_weight = (weight.astype(np.float64) * scale).astype(np.float32)
    folded_bias = ((b - mean.astype(np.float64)) * a + beta.astype(np.float64)).astype(np.float32)
    return folded_weight, folded_bias


def folds_into(norm: BatchNormOp) -> Conv2DOp | LinearOp | None:
    """The conv or linear layer `norm` folds into: the one that computes its input, with no
    fused activation and no other user of its result (None if there is no such layer)."""
    layer = norm.input.owner
    if not isinstance(layer, Conv2DOp | LinearOp) or layer.act is not None:
        return None
    return layer if layer.output.has_one_use() else None


class FoldIntoLayer(RewritePattern):
    """batch_norm(conv(x, W, b)) -> conv(x, W', b') when the conv feeds only the norm."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, norm: BatchNormOp, rewriter: PatternRewriter) -> None:
        layer = folds_into(norm)
        if layer is None:
            return
        weight, bias = constant_array(layer.weight), constant_array(layer.bias)
        stats = [constant_array(v) for v in (norm.scale, norm.shift, norm.mean, norm.var)]
        if (
            weight is None
            or (layer.bias is not None and bias is None)
            or any(s is None for s in stats)
        ):
            return
        gamma, beta, mean, var = stats
        assert gamma is not None and beta is not None and mean is not None and var is not None
        new_weight, new_bias = fold(weight, bias, gamma, beta, mean, var, norm.eps.value.data)
        weight_path = layer.weight.owner.path  # type: ignore[union-attr]
        w = insert_constant(rewriter, layer, new_weight, weight_path.data if weight_path else None)
        b = insert_constant(rewriter, layer, new_bias, f"{layer.path.data}.bias")
        new_layer = rebuild(layer, [layer.input, w, b], rewriter)
        rewriter.replace(norm, [], [new_layer.results[0]])


@dataclass(frozen=True)
class FoldBatchNormPass(ModulePass):
    """Fold each `qnn.batch_norm` into the conv or linear layer that feeds it.

    Expects: float `qnn` IR whose layers have constant weights.
    Guarantees: every batch norm directly after a conv or linear layer (with no fused
    activation and no other user of its result) is gone; the layer's weight and bias are rescaled
    so the results equal layer-then-norm to f32 rounding (computed in float64).
    Fails: with `strict=true`, if a batch norm remains that cannot be folded (after an add, a
    pool, or a layer whose result has other users), naming it.
    """

    name = "fold-batchnorm"
    strict: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        apply_patterns(op, [FoldIntoLayer()])
        if not self.strict:
            return
        left = [o for o in op.walk() if isinstance(o, BatchNormOp)]
        if left:
            names = ", ".join(f'"{o.path.data}"' for o in left)
            raise DopantError(
                f"{len(left)} batch norm(s) could not be folded: {names}; they do "
                "not directly follow a conv or linear layer used only by them."
            )
