"""Frontend lowerings of layers with weights, activations and the residual add."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import fx

from dopant.compiler.frontend.base import (
    NO_PAD,
    Emitter,
    Lowering,
    Pads,
    add_pads,
    args_of,
    aten,
    dims,
    is_param,
    pad_input_reason,
    pair,
    rank,
    result_type,
    sym_pads,
)
from dopant.dialects import qnn

# ---- convolution and linear -------------------------------------------------------------------


def _conv_params(node: fx.Node) -> tuple[Any, Any, Any, Any, Any, Any, int]:
    a = args_of(node)
    return (
        a["input"],
        a["weight"],
        a.get("bias"),
        a["stride"],
        a["padding"],
        a["dilation"],
        int(a["groups"]),
    )


def _check_conv(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if node.target == aten.convolution.default and (a["transposed"] or rank(a["input"]) != 4):
        return "only 2-D, non-transposed convolutions are supported"
    if rank(a["input"]) != 4:
        return "only 2-D convolutions on NCHW input are supported"
    if not is_param(a["weight"], params) or (
        a["bias"] is not None and not is_param(a["bias"], params)
    ):
        return "the weight and bias must be parameters of the model"
    return pad_input_reason(node, "convolution")


def _same_pads(kernel: tuple[int, int], dilation: tuple[int, int]) -> Pads:
    # torch's padding='same' puts the odd pixel at the bottom/right.
    th, tw = (d * (k - 1) for k, d in zip(kernel, dilation, strict=True))
    return th // 2, th - th // 2, tw // 2, tw - tw // 2


def _emit_conv(em: Emitter, node: fx.Node) -> None:
    x, w, b, stride, padding, dilation, groups = _conv_params(node)
    value, folded = em.unpadded(x)
    dil = pair(dilation)
    if padding == "same":
        own = _same_pads(pair(dims(w)[2:]), dil)
    elif padding == "valid":
        own = NO_PAD
    else:
        own = sym_pads(padding)
    op = qnn.Conv2DOp(
        value,
        em.value(w),
        em.value(b) if b is not None else None,
        result_type(node),
        strides=pair(stride),
        padding=add_pads(own, folded),
        dilation=dil,
        groups=groups,
        path=em.paths[node],
    )
    em.define(node, op.output)


def _check_linear(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if rank(a["input"]) != 2:
        return "linear layers take [batch, features] input; flatten before them"
    if not is_param(a["weight"], params) or (
        a["bias"] is not None and not is_param(a["bias"], params)
    ):
        return "the weight and bias must be parameters of the model"
    return None


def _emit_linear(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    bias = em.value(a["bias"]) if a["bias"] is not None else None
    op = qnn.LinearOp(
        em.value(a["input"]), em.value(a["weight"]), bias, result_type(node), path=em.paths[node]
    )
    em.define(node, op.output)


def _check_batch_norm(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if rank(a["input"]) not in (2, 4):
        return "batch norm is supported on rank-2 and rank-4 input"
    stats = [a["running_mean"], a["running_var"], a["weight"], a["bias"]]
    if any(s is not None and not is_param(s, params) for s in stats):
        return "batch norm statistics and affine parameters must belong to the model"
    return None


def _emit_batch_norm(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    channels = dims(a["input"])[1]
    path = em.paths[node]
    scale = (
        em.value(a["weight"])
        if a["weight"] is not None
        else em.constant(np.ones(channels), f"{path}.weight")
    )
    shift = (
        em.value(a["bias"])
        if a["bias"] is not None
        else em.constant(np.zeros(channels), f"{path}.bias")
    )
    op = qnn.BatchNormOp(
        em.value(a["input"]),
        scale,
        shift,
        em.value(a["running_mean"]),
        em.value(a["running_var"]),
        eps=float(a["eps"]),
        path=path,
    )
    em.define(node, op.output)


# ---- activations and arithmetic --------------------------------------------------------------


def _emit_relu(em: Emitter, node: fx.Node) -> None:
    em.define(node, qnn.ReluOp(em.value(node.args[0]), path=em.paths[node]).output)  # type: ignore[arg-type]


def _clamp_bounds(node: fx.Node) -> tuple[float | None, float | None]:
    a = args_of(node)
    if node.target == aten.relu6.default:
        return 0.0, 6.0
    if node.target == aten.hardtanh.default:
        return float(a["min_val"]), float(a["max_val"])
    lo, hi = a["min"], a["max"]
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _check_clamp(node: fx.Node, params: frozenset[str]) -> str | None:
    lo, hi = _clamp_bounds(node)
    if lo == 0.0 and hi is None:
        return None  # a relu
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        return "only clamps with two finite bounds, or a lower bound of 0, are supported"
    return None


def _emit_clamp(em: Emitter, node: fx.Node) -> None:
    lo, hi = _clamp_bounds(node)
    x = em.value(node.args[0])  # type: ignore[arg-type]
    if hi is None:
        em.define(node, qnn.ReluOp(x, path=em.paths[node]).output)
        return
    assert lo is not None
    em.define(node, qnn.ClampOp(x, lo=lo, hi=hi, path=em.paths[node]).output)


def _check_add(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    other = a["other"]
    if not isinstance(other, fx.Node) or dims(other) != dims(a["self"]):
        return "only adds of two tensors of the same shape (residual adds) are supported"
    if a["alpha"] != 1:
        return "add with alpha other than 1 is not supported"
    return None


def _emit_add(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    op = qnn.AddOp(em.value(a["self"]), em.value(a["other"]), path=em.paths[node])
    em.define(node, op.output)


LAYER_LOWERINGS: dict[Any, Lowering] = {
    aten.conv2d.default: Lowering(_emit_conv, _check_conv),
    aten.conv2d.padding: Lowering(_emit_conv, _check_conv),
    aten.convolution.default: Lowering(_emit_conv, _check_conv),
    aten.linear.default: Lowering(_emit_linear, _check_linear),
    aten._native_batch_norm_legit_no_training.default: Lowering(
        _emit_batch_norm, _check_batch_norm
    ),
    aten.relu.default: Lowering(_emit_relu),
    aten.relu6.default: Lowering(_emit_clamp, _check_clamp),
    aten.hardtanh.default: Lowering(_emit_clamp, _check_clamp),
    aten.clamp.default: Lowering(_emit_clamp, _check_clamp),
    aten.add.Tensor: Lowering(_emit_add, _check_add),
}
