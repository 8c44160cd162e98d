"""What the frontend's lowerings share: the `Lowering` entry, the `Emitter` state, arg helpers.

A lowering's `check(node, params)` returns None when the node can be imported, or a short reason;
its `emit` creates the `qnn` ops inside the current builder. Explicit zero padding (`F.pad`,
`ZeroPad2d`) emits nothing: the conv or pool after it takes the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx
from xdsl.dialects.builtin import TensorType, f32
from xdsl.ir import SSAValue

from dopant.dialects import qnn

aten = torch.ops.aten
Pads = tuple[int, int, int, int]  # top, bottom, left, right
NO_PAD: Pads = (0, 0, 0, 0)


def op_name(target: Any) -> str:
    """`aten.conv2d.default` -> `aten.conv2d`: the name users know an op by."""
    text = str(getattr(target, "_overloadpacket", target))
    return text if text.startswith("aten.") else getattr(target, "__name__", text)


def args_of(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    values: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        else:
            values[arg.name] = arg.default_value if arg.has_default_value() else None
    return values


def rank(node: Any) -> int:
    return len(node.meta["val"].shape) if isinstance(node, fx.Node) else 0


def dims(node: fx.Node) -> list[int]:
    return [int(d) for d in node.meta["val"].shape]


def result_type(node: fx.Node) -> TensorType:
    return TensorType(f32, dims(node))


def pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))


def sym_pads(padding: int | list[int]) -> Pads:
    ph, pw = pair(padding)
    return ph, ph, pw, pw


def add_pads(a: Pads, b: Pads) -> Pads:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def is_pad(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.target in (
        aten.constant_pad_nd.default,
        aten.pad.default,
    )


def torch_pads(node: fx.Node) -> Pads:
    """F.pad's (left, right, top, bottom) as qnn's (top, bottom, left, right)."""
    left, right, top, bottom = (int(p) for p in args_of(node)["pad"])
    return top, bottom, left, right


@dataclass
class Emitter:
    """State of one import: the SSA value of each node and the constants made so far."""

    paths: dict[fx.Node, str]
    parameters: dict[str, tuple[str, torch.Tensor]]  # placeholder name -> (fqn, tensor)
    values: dict[fx.Node, SSAValue] = field(default_factory=dict)

    def value(self, node: fx.Node) -> SSAValue:
        if node in self.values:
            return self.values[node]
        fqn, tensor = self.parameters[node.name]
        array = tensor.detach().to(torch.float32).contiguous().numpy()
        constant = qnn.ConstantOp.of(array, fqn)
        self.values[node] = constant.result
        return constant.result

    def constant(self, array: np.ndarray, path: str) -> SSAValue:
        return qnn.ConstantOp.of(array.astype(np.float32), path).result

    def unpadded(self, node: fx.Node) -> tuple[SSAValue, Pads]:
        """The value under any explicit zero padding, and that padding."""
        if is_pad(node):
            source = args_of(node)["self"] if "self" in args_of(node) else args_of(node)["input"]
            return self.value(source), torch_pads(node)
        return self.value(node), NO_PAD

    def define(self, node: fx.Node, value: SSAValue) -> None:
        value.name_hint = node.name
        self.values[node] = value


Check = Callable[[fx.Node, frozenset[str]], "str | None"]


def _always(node: fx.Node, params: frozenset[str]) -> str | None:
    return None


@dataclass(frozen=True)
class Lowering:
    """How one ATen op becomes `qnn`: a support check, an emitter, and whether it emits an op."""

    emit: Callable[[Emitter, fx.Node], None]
    check: Check = _always
    emits: bool = True


def is_param(node: Any, params: frozenset[str]) -> bool:
    return isinstance(node, fx.Node) and node.op == "placeholder" and node.name in params


def pad_input_reason(node: fx.Node, what: str) -> str | None:
    """Explicit padding folds into a conv or pool only if it is zeros on H and W."""
    source = node.args[0]
    if not is_pad(source):
        return None
    assert isinstance(source, fx.Node)
    args = args_of(source)
    if args.get("mode", "constant") != "constant" or float(args.get("value") or 0.0) != 0.0:
        return f"padding before a {what} must be zeros"
    if len(args["pad"]) != 4 or any(int(p) < 0 for p in args["pad"]):
        return f"padding before a {what} must be 4 non-negative sizes (H and W only)"
    return None
