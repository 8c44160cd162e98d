"""The rows of a network's latency table: one per row of the timing model's statistics.

`timed_ir(module)` is the IR the compiler would time: float IR goes through the canonical passes
(fold-batchnorm, fuse-activation) and `quantize` at W8A8 with synthetic calibration ranges
(the input taken as unsigned), so fused activations and requantizes are where a compile puts
them; quantized IR is taken as it is; either is set to batch 1. `table_rows(ir)` walks it in
program order: each conv2d or linear is a layer row, each op the lowering runs on the vector
unit (add, relu, clamp, pools, concat) a vector row, named by module path as `RunStats.layers`
names them. A row the table cannot time alone (a concat, a standalone requantize without a
clamp, several ops sharing one module path) gets no template: it is *fixed*, costed by its
added cycles in the dense W8A8 network.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerType, ModuleOp, Signedness
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Operation, SSAValue

from dopant.codesign._latency.programs import Template, calibration
from dopant.compiler.driver import CANONICAL_PIPELINE, input_batch, is_quantized
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import (
    ActivationAttr,
    AddOp,
    AvgPool2DOp,
    ClampOp,
    Conv2DOp,
    DequantizeOp,
    GlobalAvgPoolOp,
    LinearOp,
    MaxPool2DOp,
    QnnOp,
    ReluOp,
    RequantizeOp,
    ReshapeOp,
)
from dopant.dialects.qnn.base import element, forward, shape
from dopant.passes._prune_channels.costs import MemberKey
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes.quantize import QuantizeNote, QuantizePass
from dopant.passes.tiling.ops import VECTOR_OPS
from dopant.passes.tiling.plan import ConvShape, fused_requantize

LAYERS = (Conv2DOp, LinearOp)
# Ops through which a vector row's channels are traced back to the layer that made them.
_CARRIERS = (ReluOp, ClampOp, MaxPool2DOp, AvgPool2DOp, GlobalAvgPoolOp, AddOp, RequantizeOp)
_POOL_NAMES = {MaxPool2DOp: "max_pool2d", AvgPool2DOp: "avg_pool2d"}
_NOT_PROPS = ("path", "act", "groups", "in_params", "out_params", "lhs_params", "rhs_params")


@dataclass(frozen=True)
class TableRow:
    """One row of a latency table (see `LatencyTable`).

    `name`: the `RunStats.layers` row name (module path, or a vector op's path like
    "layer1.0/add"); `kind`: "conv2d", "linear" or "vector"; `in_key`/`out_key`: whose kept
    count sets this row's input/output width: (path, "in")/(path, "out") for a layer; for a
    vector row no in_key and, as out_key, the (path, "out") of the conv/linear whose channels it
    carries (traced back through relu, clamp, pools, channel-preserving reshapes and the first
    operand of adds), None if none; `full_in`/`full_out`: full widths in the keys' units
    (features for a linear's input); `readers`: for a vector row, the conv/linear paths that
    read its result through other vector ops and reshapes (their a_bits set its stored width),
    () for a layer; `feeds_output`: the result (also) leaves the network; `in_unit`/`out_unit`:
    how many indices one group channel spans in that dimension (H*W for a linear after a
    flatten, the groups of a grouped conv, else 1), so kept counts are multiples of them;
    `tied`: a depthwise conv, whose output count is its input count times full_out // full_in;
    `fixed`: the row has no single-op program and costs its added cycles in the network as
    given (W8A8 for float IR); `shares_input`: for a layer, the layers that read its input as
    stored (itself included, as `readers` of that value): `quantize` stores it at the widest
    a_bits among them, so that is the width this layer multiplies at.
    """

    name: str
    kind: str
    in_key: MemberKey | None
    out_key: MemberKey | None
    full_in: int
    full_out: int
    readers: tuple[str, ...]
    feeds_output: bool = False
    in_unit: int = 1
    out_unit: int = 1
    tied: bool = False
    fixed: bool = False
    shares_input: tuple[str, ...] = ()


def _signed(value: SSAValue) -> bool:
    elem = element(value)
    return isinstance(elem, IntegerType) and elem.signedness.data != Signedness.UNSIGNED


def _nonnegative(op: QnnOp) -> bool:
    """Whether calibration would find `op`'s float result never negative (a ReLU, a clamp at
    or above 0, an activation fused with such bounds)."""
    if isinstance(op, ReluOp):
        return True
    if isinstance(op, ClampOp):
        return op.bounds[0] >= 0
    act = op.properties.get("act")
    return isinstance(act, ActivationAttr) and act.bounds[0] >= 0


def _calibrate(fn: FuncOp) -> None:
    """Synthetic ranges on every op and on the input, enough for `quantize` to run."""
    for op in fn.body.walk():
        if isinstance(op, QnnOp):
            op.attributes["calib"] = calibration(not _nonnegative(op))
    fn.arg_attrs = ArrayAttr([DictionaryAttr({"qnn.calib": calibration(False)})])


def timed_ir(module: ModuleOp) -> ModuleOp:
    """A batch-1 quantized copy of float or quantized `module` (see the module docstring);
    `module` is left as it is. Fails as the canonical passes and `quantize` do."""
    work = module.clone()
    if not is_quantized(work):
        run_pipeline(work, CANONICAL_PIPELINE)
        _calibrate(forward(work, "to build a latency table"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QuantizeNote)  # weights only shape the timing
            run_pipeline(work, [QuantizePass()])
    if input_batch(work) != 1:
        run_pipeline(work, "set-batch{size=1}")
    return work


def _act(attr: ActivationAttr | None) -> tuple[float, float] | None:
    return None if attr is None else attr.bounds


def _conv_template(op: Conv2DOp) -> Template:
    _, c, *spatial = shape(op.input)
    _, per_group, *kernel = shape(op.weight)
    groups = op.groups.value.data
    depthwise = groups > 1 and groups == c and per_group == 1
    return Template(
        "conv2d",
        tuple(spatial),
        shape(op.output)[2:],
        _signed(op.input),
        _act(fused_requantize(op).act),
        tuple((name, op.properties[name]) for name in ("strides", "padding", "dilation")),
        tuple(kernel),
        1 if depthwise else groups,
        depthwise,
        ConvShape.of(op).has_bias,
    )


def _template(op: Operation) -> Template | None:
    """The single-op program of `op`'s row, or None when it has none (a fixed row)."""
    if isinstance(op, Conv2DOp):
        return _conv_template(op)
    if isinstance(op, LinearOp):
        act = _act(fused_requantize(op).act)
        return Template("linear", (), (), _signed(op.input), act, bias=ConvShape.of(op).has_bias)
    x, result = op.operands[0], op.results[0]
    base = (shape(x)[2:], shape(result)[2:], _signed(x))
    if isinstance(op, AddOp):
        return Template("add", *base, _act(op.act))
    if isinstance(op, ReluOp):
        return Template("relu", *base)
    if isinstance(op, RequantizeOp) and op.act is not None and op.act.kind.data == "clamp":
        return Template("clamp", *base, op.act.bounds)
    if isinstance(op, GlobalAvgPoolOp):
        return Template("global_avg_pool", *base)
    if isinstance(op, MaxPool2DOp | AvgPool2DOp):
        props = tuple(sorted((k, v) for k, v in op.properties.items() if k not in _NOT_PROPS))
        return Template(_POOL_NAMES[type(op)], *base, props=props)
    return None


def _producer(value: SSAValue) -> MemberKey | None:
    """(path, "out") of the conv/linear whose output channels `value` carries, or None."""
    while True:
        op = value.owner
        if isinstance(op, RequantizeOp) and isinstance(op.input.owner, LAYERS):
            return (op.input.owner.path.data, "out")
        if isinstance(op, ReshapeOp) and shape(op.input)[1] == shape(op.output)[1]:
            value = op.input
        elif isinstance(op, _CARRIERS):
            value = op.operands[0]
        else:
            return None


def _readers(value: SSAValue, order: Mapping[Operation, int]) -> tuple[tuple[str, ...], bool]:
    """The conv/linear layers that read `value` through ops that only move or combine values
    (in program order), and whether it reaches the network's output."""
    readers: set[Operation] = set()
    output = False
    seen: set[Operation] = set()
    todo = [value]
    while todo:
        for use in todo.pop().uses:
            user = use.operation
            if isinstance(user, LAYERS):
                readers.add(user)
            elif isinstance(user, DequantizeOp | ReturnOp):
                output = True
            elif isinstance(user, QnnOp) and user not in seen:
                seen.add(user)
                todo.extend(user.results)
    ordered = sorted(readers, key=lambda op: order[op])
    return tuple(op.path.data for op in ordered if isinstance(op, QnnOp)), output


def _layer_row(
    op: Conv2DOp | LinearOp,
    t: Template | None,
    units: Mapping[MemberKey, int],
    order: Mapping[Operation, int],
) -> TableRow:
    name = op.path.data
    kind = "conv2d" if isinstance(op, Conv2DOp) else "linear"
    full_in, full_out = shape(op.input)[1], shape(op.weight)[0]
    peers, _ = _readers(op.input, order)
    if t is None:
        return TableRow(
            name, kind, None, None, full_in, full_out, (), fixed=True, shares_input=peers
        )
    in_unit, out_unit = units.get((name, "in"), 1), units.get((name, "out"), 1)
    if t.groups > 1:  # a grouped conv keeps a multiple of its groups on both sides
        in_unit, out_unit = math.lcm(in_unit, t.groups), math.lcm(out_unit, t.groups)
    return TableRow(
        name,
        kind,
        (name, "in"),
        (name, "out"),
        full_in,
        full_out,
        (),
        in_unit=in_unit,
        out_unit=out_unit,
        tied=t.depthwise,
        shares_input=peers,
    )


def table_rows(ir: ModuleOp) -> tuple[list[TableRow], dict[str, Template]]:
    """The rows of batch-1 quantized `ir` (from `timed_ir`) in program order, and the template
    of each row that has one, by row name."""
    ops = list(forward(ir, "to build a latency table").body.block.ops)
    order = {op: i for i, op in enumerate(ops)}
    fused = {fused_requantize(op) for op in ops if isinstance(op, LAYERS)}
    timed = [
        op
        for op in ops
        if isinstance(op, LAYERS) or (isinstance(op, VECTOR_OPS) and op not in fused)
    ]
    shared = Counter(op.path.data for op in timed)
    units: dict[MemberKey, int] = {
        (m.path, m.dim): m.per_channel for g in coupling_groups(ir) for m in g.members
    }
    rows: dict[str, TableRow] = {}
    templates: dict[str, Template] = {}
    for op in timed:
        assert isinstance(op, QnnOp), "layers and vector ops are qnn ops"
        name = op.path.data
        if name in rows:
            continue  # a later op of a shared path: part of the first one's fixed row
        t = None if shared[name] > 1 else _template(op)
        if t is not None:
            templates[name] = t
        if isinstance(op, LAYERS):
            rows[name] = _layer_row(op, t, units, order)
            continue
        readers, output = _readers(op.results[0], order)
        out_key = _producer(op.operands[0]) if t is not None else None
        unit = units.get(out_key, 1) if out_key is not None else 1
        channels = shape(op.results[0])[1]
        rows[name] = TableRow(
            name,
            "vector",
            None,
            out_key,
            channels,
            channels,
            readers,
            output,
            unit,
            unit,
            fixed=t is None,
        )
    return list(rows.values()), templates
