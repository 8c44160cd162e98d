"""The channel graph: one node per channel of every activation, an edge where two must go together.

Nodes are integers: activation `v`'s channel `c` is `base[v] + c` (the channel axis is 1, as in
NCHW and [batch, features]). Edges come from the ops (the rules below); a connected component
is one *unit*, a set of channels removed together. Channels that must stay (the network's
input, the logits, anything an op `prune-channels` does not understand touches) are *pinned*,
each with the reason.

Rules, one per op kind:
- pass-through (relu, clamp, pools, batch norm, quantize, dequantize, requantize): in c ~ out c;
- add: lhs c ~ rhs c ~ out c;
- concat along channels: input k's c ~ out (offset_k + c); along another axis: all c ~ c;
- reshape [N, C, H, W] -> [N, C*H*W]: in c ~ out c*H*W + k for every k < H*W;
- depthwise conv (one input channel per group): in g ~ out g*m + k for k < m (m outputs per
  group); grouped conv (more than one input channel per group): channel j of every input group
  ~ channel j of group 0, and the same for the outputs, so every group keeps the same width;
- conv (groups 1) and linear start new channels: no edge between input and output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue

from dopant.dialects.qnn import (
    AddOp,
    AvgPool2DOp,
    BatchNormOp,
    ClampOp,
    ConcatOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    GlobalAvgPoolOp,
    LinearOp,
    MaxPool2DOp,
    QuantizeOp,
    ReluOp,
    RequantizeOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import QnnOp
from dopant.support.errors import DopantError

# Their other operands are weights, biases and statistics, not activations.
LAYERS = (Conv2DOp, LinearOp, BatchNormOp)
PASS_THROUGH = (
    ReluOp,
    ClampOp,
    MaxPool2DOp,
    AvgPool2DOp,
    GlobalAvgPoolOp,
    BatchNormOp,
    QuantizeOp,
    DequantizeOp,
    RequantizeOp,
)


@dataclass
class ChannelGraph:
    """The channel nodes of one `@forward` function, their edges and the pinned ones."""

    fn: func.FuncOp
    base: dict[SSAValue, int] = field(default_factory=dict)
    width: dict[SSAValue, int] = field(default_factory=dict)
    graph: nx.Graph = field(default_factory=nx.Graph)
    pinned: dict[int, str] = field(default_factory=dict)

    def channels(self, value: SSAValue) -> np.ndarray:
        """The node of each channel of `value`."""
        return self.base[value] + np.arange(self.width[value])

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.graph.add_edges_from(zip(a.tolist(), b.tolist(), strict=True))

    def pin(self, value: SSAValue, reason: str) -> None:
        for node in self.channels(value).tolist():
            self.pinned.setdefault(node, reason)

    def add_value(self, value: SSAValue) -> None:
        ty = value.type
        if not isinstance(ty, TensorType) or len(ty.get_shape()) < 2:
            return
        self.base[value] = self.graph.number_of_nodes()
        self.width[value] = ty.get_shape()[1]
        self.graph.add_nodes_from(self.channels(value).tolist())

    def units(self) -> np.ndarray:
        """The unit (connected component) of each node, numbered by each one's smallest node."""
        unit = np.empty(self.graph.number_of_nodes(), dtype=np.int64)
        for component in nx.connected_components(self.graph):
            nodes = np.fromiter(component, dtype=np.int64)
            unit[nodes] = nodes.min()
        return unit


def forward_function(module: ModuleOp) -> func.FuncOp:
    fns = [op for op in module.walk() if isinstance(op, func.FuncOp)]
    if len(fns) != 1:
        raise DopantError(
            f"prune-channels expects one function (@forward) in the module, found {len(fns)}."
        )
    return fns[0]


def channel_graph(module: ModuleOp) -> ChannelGraph:
    """Nodes for every activation channel of `@forward`, tied and pinned by the rules above."""
    g = ChannelGraph(forward_function(module))
    for arg in g.fn.body.block.args:
        g.add_value(arg)
        if arg in g.base:
            g.pin(arg, "the network's input channels")
    for op in g.fn.body.block.ops:
        for result in op.results:
            g.add_value(result)
        _tie(g, op)
    return g


def _activations(op: Operation) -> list[SSAValue]:
    """The operands and results of `op` that carry channels (not a layer's parameters)."""
    if isinstance(op, LAYERS):
        return [op.operands[0], op.results[0]]
    return [*op.operands, *op.results]


def _untracked(g: ChannelGraph, op: Operation, where: str) -> str | None:
    """Why `op`'s channels cannot be followed, if they cannot."""
    flowing = _activations(op)
    if any(v not in g.base for v in flowing):
        return f"{where}, whose tensor of rank below 2 has no channel axis"
    if any(isinstance(v.owner, ConstantOp) for v in flowing):
        return f"{where}, which reads a constant tensor that prune-channels does not slice"
    return None


def _tie(g: ChannelGraph, op: Operation) -> None:
    if isinstance(op, ConstantOp):
        return
    if isinstance(op, func.ReturnOp):
        for value in op.operands:
            if value in g.base:
                g.pin(value, "the network's outputs (logits)")
        return
    where = op.where if isinstance(op, QnnOp) else op.name
    reason = _untracked(g, op, where)
    if reason is None and not isinstance(op, (*PASS_THROUGH, *LAYERS, AddOp, ConcatOp, ReshapeOp)):
        reason = f"{where}, which prune-channels does not prune through"
    if reason is not None:
        for value in _activations(op):
            if value in g.base:
                g.pin(value, reason)
        return
    if isinstance(op, PASS_THROUGH):
        g.tie(g.channels(op.operands[0]), g.channels(op.results[0]))
    elif isinstance(op, AddOp):
        g.tie(g.channels(op.lhs), g.channels(op.output))
        g.tie(g.channels(op.rhs), g.channels(op.output))
    elif isinstance(op, ConcatOp):
        _tie_concat(g, op)
    elif isinstance(op, ReshapeOp):
        _tie_reshape(g, op)
    elif isinstance(op, Conv2DOp):
        _tie_conv(g, op)


def _tie_concat(g: ChannelGraph, op: ConcatOp) -> None:
    out = g.channels(op.output)
    if op.axis.value.data != 1:
        for value in op.inputs:
            g.tie(g.channels(value), out)
        return
    offset = 0
    for value in op.inputs:
        width = g.width[value]
        g.tie(g.channels(value), out[offset : offset + width])
        offset += width


def _tie_reshape(g: ChannelGraph, op: ReshapeOp) -> None:
    src, dst = op.input, op.output
    src_shape = list(src.type.get_shape())  # type: ignore[attr-defined]
    dst_shape = list(dst.type.get_shape())  # type: ignore[attr-defined]
    if src_shape[:2] == dst_shape[:2]:
        g.tie(g.channels(src), g.channels(dst))
        return
    per_channel = int(np.prod(src_shape[2:], dtype=np.int64))
    if (
        len(dst_shape) == 2
        and src_shape[0] == dst_shape[0]
        and dst_shape[1] == g.width[src] * per_channel
    ):
        features = g.channels(dst).reshape(g.width[src], per_channel)
        for k in range(per_channel):
            g.tie(g.channels(src), features[:, k])
        return
    reason = f"{op.where}, a reshape other than a flatten, which mixes channels"
    g.pin(src, reason)
    g.pin(dst, reason)


def _tie_conv(g: ChannelGraph, op: Conv2DOp) -> None:
    groups = op.groups.value.data
    if groups == 1:
        return
    ins, outs = g.channels(op.input), g.channels(op.output)
    per_in, per_out = len(ins) // groups, len(outs) // groups
    if per_in == 1:
        for k in range(per_out):
            g.tie(ins, outs[k::per_out])
        return
    for nodes, per in ((ins, per_in), (outs, per_out)):
        blocks = nodes.reshape(groups, per)
        for other in blocks[1:]:
            g.tie(blocks[0], other)
