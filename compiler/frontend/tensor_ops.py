"""Frontend lowerings of pooling, shape ops, concatenation, padding and eval-mode identities."""

from __future__ import annotations

import operator
from typing import Any

from torch import fx
from xdsl.dialects.builtin import TensorType, f32

from dopant.compiler.frontend.base import (
    NO_PAD,
    Emitter,
    Lowering,
    add_pads,
    args_of,
    aten,
    dims,
    is_pad,
    pad_input_reason,
    pair,
    rank,
    result_type,
    sym_pads,
)
from dopant.dialects import qnn

POOL_USERS = {
    aten.max_pool2d.default,
    aten.max_pool2d_with_indices.default,
    aten.avg_pool2d.default,
}
CONV_USERS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}


def _check_pad(node: fx.Node, params: frozenset[str]) -> str | None:
    if any(user.target not in POOL_USERS | CONV_USERS for user in node.users):
        return "explicit padding must feed only convolutions and pooling layers"
    return None


def _check_max_pool(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if rank(a["self"]) != 4:
        return "only 2-D pooling on NCHW input is supported"
    if is_pad(a["self"]) and any(int(p) for p in a["padding"]):
        return "zero padding before a max pool that pads itself cannot be folded"
    if is_pad(a["self"]) and a["ceil_mode"]:
        return "zero padding before a ceil-mode pool cannot be folded"
    return pad_input_reason(node, "max pool")


def _pool_stride(a: dict[str, Any]) -> tuple[int, int]:
    # An empty stride means stride = kernel (torch's default).
    return pair(a["stride"]) if a["stride"] else pair(a["kernel_size"])


def _emit_max_pool(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    value, folded = em.unpadded(a["self"])
    op = qnn.MaxPool2DOp(
        value,
        result_type(node),
        kernel=pair(a["kernel_size"]),
        strides=_pool_stride(a),
        padding=add_pads(sym_pads(a["padding"]), folded),
        dilation=pair(a["dilation"]),
        ceil_mode=bool(a["ceil_mode"]),
        zero_pad=folded != NO_PAD,
        path=em.paths[node],
    )
    em.define(node, op.output)


def _check_avg_pool(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if rank(a["self"]) != 4:
        return "only 2-D pooling on NCHW input is supported"
    if a["divisor_override"] is not None:
        return "avg_pool2d with divisor_override is not supported"
    if is_pad(a["self"]) and any(int(p) for p in a["padding"]) and not a["count_include_pad"]:
        return "zero padding before an avg pool with count_include_pad=False cannot be folded"
    if is_pad(a["self"]) and a["ceil_mode"]:
        return "zero padding before a ceil-mode pool cannot be folded"
    return pad_input_reason(node, "avg pool")


def _emit_avg_pool(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    value, folded = em.unpadded(a["self"])
    op = qnn.AvgPool2DOp(
        value,
        result_type(node),
        kernel=pair(a["kernel_size"]),
        strides=_pool_stride(a),
        padding=add_pads(sym_pads(a["padding"]), folded),
        ceil_mode=bool(a["ceil_mode"]),
        count_include_pad=bool(a["count_include_pad"]) or folded != NO_PAD,
        path=em.paths[node],
    )
    em.define(node, op.output)


def _check_adaptive(node: fx.Node, params: frozenset[str]) -> str | None:
    a = args_of(node)
    if rank(a["self"]) != 4:
        return "only 2-D pooling on NCHW input is supported"
    h, w = dims(a["self"])[2:]
    oh, ow = pair(a["output_size"])
    if h % oh or w % ow:
        return f"adaptive pooling from {h}x{w} to {oh}x{ow} has uneven windows"
    return None


def _emit_adaptive(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    x = em.value(a["self"])
    h, w = dims(a["self"])[2:]
    oh, ow = pair(a["output_size"])
    if (oh, ow) == (h, w):
        em.values[node] = x
    elif (oh, ow) == (1, 1):
        em.define(node, qnn.GlobalAvgPoolOp(x, result_type(node), path=em.paths[node]).output)
    else:
        kernel = (h // oh, w // ow)
        op = qnn.AvgPool2DOp(
            x,
            result_type(node),
            kernel=kernel,
            strides=kernel,
            padding=NO_PAD,
            ceil_mode=False,
            count_include_pad=False,
            path=em.paths[node],
        )
        em.define(node, op.output)


def _spatial_mean_dims(node: fx.Node) -> set[int]:
    a = args_of(node)
    return {d % 4 for d in a["dim"] or []}


def _check_mean(node: fx.Node, params: frozenset[str]) -> str | None:
    if rank(args_of(node)["self"]) != 4 or _spatial_mean_dims(node) != {2, 3}:
        return "only a mean over the two spatial axes of NCHW input (global pooling) is supported"
    return None


def _emit_mean(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    x = em.value(a["self"])
    n, c = dims(a["self"])[:2]
    pooled = qnn.GlobalAvgPoolOp(x, TensorType(f32, [n, c, 1, 1]), path=em.paths[node]).output
    if not a["keepdim"]:
        pooled = qnn.ReshapeOp(pooled, result_type(node), path=f"{em.paths[node]}/flatten").output
    em.define(node, pooled)


def _emit_reshape(em: Emitter, node: fx.Node) -> None:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    x = em.value(source)
    if dims(source) == dims(node):
        em.values[node] = x
        return
    em.define(node, qnn.ReshapeOp(x, result_type(node), path=em.paths[node]).output)


def _check_cat(node: fx.Node, params: frozenset[str]) -> str | None:
    if not all(isinstance(t, fx.Node) for t in args_of(node)["tensors"]):
        return "concatenation of non-tensor values is not supported"
    return None


def _emit_cat(em: Emitter, node: fx.Node) -> None:
    a = args_of(node)
    inputs = [em.value(t) for t in a["tensors"]]
    axis = int(a["dim"]) % rank(node)
    em.define(node, qnn.ConcatOp(inputs, result_type(node), axis=axis, path=em.paths[node]).output)


def _check_getitem(node: fx.Node, params: frozenset[str]) -> str | None:
    source = node.args[0]
    if node.args[1] != 0 or not isinstance(source, fx.Node):
        return "only the first result of batch norm and max pooling is supported"
    return None


def _emit_alias(em: Emitter, node: fx.Node) -> None:
    em.values[node] = em.value(node.args[0])  # type: ignore[arg-type]


def _emit_nothing(em: Emitter, node: fx.Node) -> None:
    """Explicit padding: the conv or pool that consumes it takes the pads (see `unpadded`)."""


def _check_dropout(node: fx.Node, params: frozenset[str]) -> str | None:
    return "dropout in training mode" if args_of(node)["train"] else None


RESHAPES = (
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.flatten.using_ints,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
)
ALIASES = (aten.clone.default, aten.alias.default, aten.detach.default)

TENSOR_LOWERINGS: dict[Any, Lowering] = {
    aten.max_pool2d.default: Lowering(_emit_max_pool, _check_max_pool),
    aten.max_pool2d_with_indices.default: Lowering(_emit_max_pool, _check_max_pool),
    aten.avg_pool2d.default: Lowering(_emit_avg_pool, _check_avg_pool),
    aten.adaptive_avg_pool2d.default: Lowering(_emit_adaptive, _check_adaptive),
    aten.mean.dim: Lowering(_emit_mean, _check_mean),
    aten.cat.default: Lowering(_emit_cat, _check_cat),
    aten.constant_pad_nd.default: Lowering(_emit_nothing, _check_pad, emits=False),
    aten.pad.default: Lowering(_emit_nothing, _check_pad, emits=False),
    aten.dropout.default: Lowering(_emit_alias, _check_dropout, emits=False),
    operator.getitem: Lowering(_emit_alias, _check_getitem, emits=False),
    **{op: Lowering(_emit_reshape) for op in RESHAPES},
    **{op: Lowering(_emit_alias, emits=False) for op in ALIASES},
}
